"""Operators of the ``@fiftyone-qdrant/qdrant`` plugin.

=============================  ==============================================
``build_qdrant_index``         build a Qdrant index from an embeddings field
                               or a model, batch by batch, with progress
``list_qdrant_indexes``        every collection of a Qdrant store, its size
                               and the FiftyOne run records stored with it
``delete_qdrant_index``        delete a brain run and its collection, or an
                               orphaned collection
``attach_qdrant_index``        re-attach a collection to the current dataset
                               from its stored run record
``migrate_builtin_qdrant_runs`` move runs made by FiftyOne's built-in
                               Qdrant backend to fiftyone-qdrant
=============================  ==============================================

Sorting by similarity (selected samples or patches, or a text prompt) needs
no operator of ours: the App's own similarity search runs
``sort_by_similarity()`` in the App server, which loads our index (see
``fiftyone_qdrant.integration``).

Every operator also runs outside the App, e.g.::

    import fiftyone.operators as foo

    foo.execute_operator(
        "@fiftyone-qdrant/qdrant/build_qdrant_index",
        ctx={"dataset": dataset, "params": {"brain_key": "qdrant", "embeddings_field": "embedding"}},
    )

Connection parameters (``path`` for an embedded store, ``url`` for a
server) default to the brain config (``FIFTYONE_BRAIN_SIMILARITY_QDRANT_*``);
a server API key comes from the plugin secret
``FIFTYONE_BRAIN_SIMILARITY_QDRANT_API_KEY``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_qdrant import build, catalog, records
from fiftyone_qdrant.batches import format_failures
from fiftyone_qdrant.catalog import resolve_settings

logger = logging.getLogger(__name__)

PLUGIN_NAME = "@fiftyone-qdrant/qdrant"
METRICS = ("cosine", "dotproduct", "euclidean", "manhattan")

_URL_SECRET = "FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL"
_API_KEY_SECRET = "FIFTYONE_BRAIN_SIMILARITY_QDRANT_API_KEY"
_PATCH_TYPES = (fo.Detection, fo.Detections, fo.Polyline, fo.Polylines)
_EMBEDDING_TYPES = (fo.VectorField, fo.ArrayField)
_NOT_EMBEDDINGS = ("mask", "map")


def _config(**kwargs) -> foo.OperatorConfig:
    # risk_level exists in recent FiftyOne releases; older ones take and
    # ignore unknown keyword arguments
    return foo.OperatorConfig(**kwargs)


# -- shared helpers ------------------------------------------------------------


def reports_failures(execute):
    """Makes a failing ``execute()`` show its message in the App.

    The App shows a failed execution only as "Error occurred during operator
    execution", the message folded under a traceback: an error notification
    carries the message itself. The exception still propagates, so the
    execution fails (``ExecutionError`` for Python callers, a failed
    delegated run)."""

    @functools.wraps(execute)
    def wrapper(self, ctx):
        try:
            return execute(self, ctx)
        except Exception as e:
            if not ctx.delegated:
                ctx.ops.notify("%s failed: %s" % (self.config.label, e), variant="error")
            raise

    return wrapper


def _secret(ctx, key: str) -> Optional[str]:
    try:
        value = ctx.secret(key)
    except Exception:  # no secrets backend
        value = None
    return value or None


def connection_kwargs(ctx) -> Dict[str, Any]:
    """Where the Qdrant store is, from the params (``path`` or ``url``) and
    the plugin secrets; unset values fall back to the brain config."""
    params = ctx.params
    conn: Dict[str, Any] = {}
    if params.get("url"):
        conn["url"] = params["url"]
    elif params.get("path"):
        conn["path"] = params["path"]
    else:
        url = _secret(ctx, _URL_SECRET)
        if url:
            conn["url"] = url
    if "url" in conn:
        api_key = _secret(ctx, _API_KEY_SECRET)
        if api_key:
            conn["api_key"] = api_key
    return conn


def _store_inputs(inputs: types.Object) -> None:
    inputs.str(
        "path",
        label="Embedded store path",
        description=(
            "Directory of the embedded Qdrant store. Default: "
            "FIFTYONE_BRAIN_SIMILARITY_QDRANT_PATH, else ~/.fiftyone/qdrant"
        ),
    )
    inputs.str(
        "url",
        label="Qdrant server URL",
        description=(
            "Use a Qdrant server instead of the embedded store (API key: the "
            "plugin secret FIFTYONE_BRAIN_SIMILARITY_QDRANT_API_KEY). Default: "
            "FIFTYONE_BRAIN_SIMILARITY_QDRANT_URL"
        ),
    )


def _progress(ctx, fraction: float, label: str) -> list:
    """Reports progress: as App messages to yield (immediate execution), or
    to the delegated-operation store (then nothing to yield)."""
    fraction = max(0.0, min(1.0, float(fraction)))
    if ctx.delegated:
        ctx.set_progress(progress=fraction, label=label)
        return []
    return [ctx.ops.set_progress(progress=fraction, label=label)]


def qdrant_brain_keys(dataset) -> List[str]:
    """Similarity runs of ``dataset`` served by a Qdrant backend (ours or
    the built-in one)."""
    if dataset is None:
        return []
    keys = []
    for key, run_doc in dataset._doc.brain_methods.items():
        config = run_doc.config or {}
        if config.get("method") == "qdrant" or "qdrant" in (config.get("cls") or "").lower():
            keys.append(key)
    return sorted(keys)


def _patch_fields(view) -> List[str]:
    schema = view.get_field_schema(embedded_doc_type=_PATCH_TYPES)
    return sorted(schema.keys())


def _embedding_fields(view, patches_field: Optional[str]) -> List[str]:
    """Vector/array fields that may hold embeddings: sample fields, or the
    attributes of the patches field's labels (declared or dynamic)."""
    schema = view.get_field_schema(flat=True)
    if patches_field:
        _, root = view._get_label_field_path(patches_field)
        prefix = root + "."
        try:
            dynamic = view.get_dynamic_field_schema(fields=patches_field)  # scans only that field
        except Exception:
            dynamic = {}
        names = {
            name[len(prefix):]
            for name, field in schema.items()
            if name.startswith(prefix) and isinstance(field, _EMBEDDING_TYPES)
        }
        names.update(
            name[len(prefix):]
            for name, field in (dynamic or {}).items()
            if name.startswith(prefix) and (field is None or isinstance(field, _EMBEDDING_TYPES))
        )
        return sorted(n for n in names if "." not in n and n not in _NOT_EMBEDDINGS)
    return sorted(
        name
        for name, field in schema.items()
        if "." not in name and isinstance(field, _EMBEDDING_TYPES) and name not in _NOT_EMBEDDINGS
    )


def _load_model(name: str, model_kwargs: Optional[dict]):
    """A model for ``name``: built by ``fiftyone_qdrant.models`` (which
    records how to reload it, so that the App server can embed text prompts
    with it), else the zoo model name itself, for FiftyOne to load."""
    try:
        from fiftyone_qdrant import models as foq_models
    except ImportError:  # e.g. torch is not installed
        foq_models = None

    if foq_models is not None:
        return foq_models.resolve_model(name, model_kwargs).model
    if model_kwargs:
        import fiftyone.zoo as foz

        return foz.load_zoo_model(name, **model_kwargs)
    return name


def model_spec_problem(name: Optional[str], model_kwargs) -> Optional[Tuple[str, str]]:
    """``(param, message)`` when a model spec cannot load, from cheap checks
    that touch neither the weights nor the network: JSON kwargs, the spec
    syntax, the open_clip architecture, the checkpoint or tag, the zoo name.
    ``None`` when nothing is wrong (or nothing is given yet)."""
    if not name:
        return None
    try:
        kwargs = _parse_model_kwargs(model_kwargs)
    except ValueError as e:
        return "model_kwargs", str(e)
    try:
        from fiftyone_qdrant import models as foq_models
    except ImportError as e:
        return "model", "Models need torch and open_clip here: %s" % e
    try:
        spec = foq_models.parse_model_spec(name, kwargs)
    except ValueError as e:
        return ("model_kwargs" if kwargs else "model"), str(e)
    kwargs = spec["model_kwargs"]
    if spec["model"].startswith(foq_models.OPEN_CLIP_PREFIX):
        import open_clip

        arch = spec["model"][len(foq_models.OPEN_CLIP_PREFIX):]
        config_path = kwargs.get("config_path")
        if config_path is not None and not os.path.isfile(config_path):
            return "model_kwargs", "open_clip config file not found: %s" % config_path
        if config_path is None and arch not in open_clip.list_models():
            return "model", (
                "Unknown open_clip architecture '%s'; pass model_kwargs {\"config_path\": \"/path/to/%s.json\"} "
                "for a custom one" % (arch, arch)
            )
        pretrained = str(kwargs.get("pretrained"))
        if foq_models._looks_like_path(pretrained):
            if not os.path.isfile(pretrained):
                return "model_kwargs", "Checkpoint file not found: %s" % pretrained
        elif config_path is None and not open_clip.get_pretrained_cfg(arch, pretrained):
            return "model_kwargs", "Unknown pretrained tag '%s' for '%s'; known tags: %s" % (
                pretrained, arch, ", ".join(open_clip.list_pretrained_tags_by_model(arch)) or "none")
        return None
    try:
        import fiftyone.zoo as foz

        foz.get_zoo_model(spec["model"])
    except Exception:
        return "model", (
            "'%s' is neither a FiftyOne zoo model nor 'open_clip:<ARCH>' (see fiftyone.zoo.list_zoo_models())"
            % spec["model"]
        )
    return None


def _parse_model_kwargs(value) -> Optional[dict]:
    if value in (None, ""):
        return None
    if isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise ValueError("model_kwargs must be a JSON object: %s" % e) from None
    if not isinstance(parsed, dict):
        raise ValueError("model_kwargs must be a JSON object, got %r" % (value,))
    return parsed


# -- build ---------------------------------------------------------------------


class BuildQdrantIndex(foo.Operator):
    """Builds a Qdrant similarity index batch by batch, reporting progress.

    Params: ``brain_key`` (required); ``embeddings_field`` (an existing
    field) or ``model`` (a zoo model name or a ``fiftyone_qdrant.models``
    name, with optional ``model_kwargs``); ``patches_field``; ``metric``;
    ``collection_name``; ``batch_size``; ``path`` / ``url``.

    A build that fails or is interrupted is rolled back (the run and the
    collection are deleted), so it can simply be run again.
    """

    @property
    def config(self):
        return _config(
            name="build_qdrant_index",
            label="Build Qdrant similarity index",
            description="Index embeddings in Qdrant for sort by similarity and text search",
            dynamic=True,
            execute_as_generator=True,
            allow_immediate_execution=True,
            allow_delegated_execution=True,
            icon="library_add",
            risk_level="medium",
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(label="Build Qdrant similarity index", icon="library_add", prompt=True),
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        view = ctx.target_view()

        prop = inputs.str(
            "brain_key",
            required=True,
            label="Brain key",
            description="The name of the new similarity index",
        )
        brain_key = ctx.params.get("brain_key")
        if brain_key and ctx.dataset is not None and ctx.dataset.has_brain_run(brain_key):
            prop.invalid = True
            prop.error_message = "Brain key '%s' already exists" % brain_key

        patch_choices = types.DropdownView()
        for name in _patch_fields(view):
            patch_choices.add_choice(name, label=name)
        inputs.str(
            "patches_field",
            label="Patches field",
            description="Index the objects of this label field instead of whole images",
            view=patch_choices,
        )
        patches_field = ctx.params.get("patches_field") or None

        source_choices = types.RadioGroup()
        source_choices.add_choice("field", label="Embeddings field", description="Use embeddings already stored on the dataset")
        source_choices.add_choice("model", label="Model", description="Compute embeddings with a model")
        inputs.enum(
            "embeddings_source",
            source_choices.values(),
            default="field",
            label="Embeddings",
            view=source_choices,
        )

        if ctx.params.get("embeddings_source", "field") == "field":
            _embeddings_field_inputs(inputs, view, patches_field)
        else:
            _model_inputs(inputs, ctx)

        metric_choices = types.DropdownView()
        for metric in METRICS:
            metric_choices.add_choice(metric, label=metric)
        inputs.enum("metric", metric_choices.values(), default="cosine", label="Metric", view=metric_choices)
        inputs.str(
            "collection_name",
            label="Collection name",
            description="Default: fiftyone-<dataset>-<brain key>",
        )
        _store_inputs(inputs)
        return types.Property(inputs, view=types.View(label="Build Qdrant similarity index"))

    def execute(self, ctx):
        # FiftyOne's generator endpoint drops an exception raised before the
        # first yield (the App shows nothing), and one raised later only cuts
        # the stream. So: yield first, and report any failure in the App (the
        # progress label and an error notification) before it propagates to
        # the execution result
        yield from _progress(ctx, 0.0, "Checking the parameters...")
        try:
            yield from self._build(ctx)
        except Exception as e:
            message = "Build failed: %s" % e
            logger.warning(message)
            if not ctx.delegated:
                yield ctx.ops.set_progress(label=message, progress=0.0)
                yield ctx.ops.notify(message, variant="error")
            raise

    def _build(self, ctx):
        import fiftyone.brain as fob

        request = _BuildRequest.from_ctx(ctx)
        yield from _progress(ctx, 0.0, "Creating the index...")
        # a model built by fiftyone_qdrant.models records its spec, so
        # fiftyone-brain's "will not support prompt queries" warning is dropped
        # for it (fiftyone_qdrant.integration), and kept where it is true
        index = fob.compute_similarity(request.view, **request.kwargs)
        try:
            batches = request.batches(index)
            for step in build.iter_write(index, batches):  # the pipeline every build uses
                yield from _progress(ctx, 0.02 + 0.96 * step.fraction, "Indexed %d of %d %s from %s" % (
                    step.written, step.total or 0, "patches" if request.patches_field else "samples", request.what))
            if index.total_index_size == 0:
                raise ValueError("No embeddings were found in %s for this view" % request.what)
            if batches.failures:
                logger.warning("%s", format_failures(batches.failures))
            index.save()
        except BaseException:
            _roll_back(ctx.dataset, request.brain_key, index)
            raise

        message = "Built Qdrant index '%s': %d vectors in collection '%s'" % (
            request.brain_key, index.total_index_size, index.collection_name)
        logger.info(message)
        yield from _progress(ctx, 1.0, message)
        yield ctx.ops.notify(message, variant="success")
        yield ctx.ops.reload_dataset()


@dataclasses.dataclass
class _BuildRequest:
    """What the build form asks for, checked before anything is created."""

    brain_key: str
    view: Any
    patches_field: Optional[str]
    embeddings_field: Optional[str]
    model: Any  # a loaded model, or None for a field
    batch_size: int
    kwargs: Dict[str, Any]  # for compute_similarity()
    what: str  # where the embeddings come from, for messages

    @classmethod
    def from_ctx(cls, ctx) -> "_BuildRequest":
        params, dataset = ctx.params, ctx.dataset
        brain_key = params.get("brain_key")
        if not brain_key:
            raise ValueError("A brain key is required")
        if dataset.has_brain_run(brain_key):
            raise ValueError("Brain key '%s' already exists on dataset '%s'" % (brain_key, dataset.name))

        view = ctx.target_view()
        patches_field = params.get("patches_field") or None
        if getattr(view, "_is_patches", False) and getattr(view, "patches_field", None):
            # a patches view: index exactly its patches, from their samples
            patches_field = patches_field or view.patches_field
            view = dataset.select_labels(ids=view.values("id"), fields=patches_field)
        source = params.get("embeddings_source") or ("model" if params.get("model") else "field")
        embeddings_field = params.get("embeddings_field") or None
        model_name = params.get("model") or None
        if source == "field" and not embeddings_field:
            raise ValueError("Choose an embeddings field, or a model")
        if source == "model" and not model_name:
            raise ValueError("Choose a model")

        kwargs: Dict[str, Any] = dict(
            backend="qdrant",
            brain_key=brain_key,
            patches_field=patches_field,
            metric=params.get("metric") or "cosine",
            embeddings=False,  # register the index; the pipeline adds the vectors
            progress=False,
            **connection_kwargs(ctx),
        )
        if params.get("collection_name"):
            kwargs["collection_name"] = params["collection_name"]
        model = None
        if source == "field":
            kwargs["embeddings_field"] = embeddings_field
            what = "field '%s'" % embeddings_field
        else:
            model = kwargs["model"] = _load_model(model_name, _parse_model_kwargs(params.get("model_kwargs")))
            what = "model '%s'" % model_name
        return cls(brain_key, view, patches_field, embeddings_field if source == "field" else None, model,
                   int(params.get("batch_size") or 32), kwargs, what)

    def batches(self, index):
        """The build's source: the model's images, or the field's values."""
        if self.model is not None:
            return build.model_batches(self.view, index.get_model(), patches_field=self.patches_field,
                                       batch_size=self.batch_size, progress=False)
        return build.FieldBatches(self.view, self.embeddings_field, patches_field=self.patches_field)


def _embeddings_field_inputs(inputs: types.Object, view, patches_field: Optional[str]) -> None:
    fields = _embedding_fields(view, patches_field)
    field_choices = types.AutocompleteView()
    for name in fields:
        field_choices.add_choice(name, label=name)
    inputs.str(
        "embeddings_field",
        required=True,
        label="Embeddings field",
        description=(
            "The attribute of each patch that holds its embedding"
            if patches_field
            else "The sample field that holds the embeddings"
        ),
        view=field_choices,
    )
    if not fields:
        inputs.view(
            "no_fields",
            types.Notice(
                label="No embeddings field found",
                description="Type a field name, or choose 'Model' to compute embeddings",
            ),
        )


def _model_inputs(inputs: types.Object, ctx) -> None:
    model_choices = types.AutocompleteView()
    try:
        import fiftyone.zoo.models as fozm

        for name in fozm.list_zoo_models(tags="embeddings"):
            model_choices.add_choice(name, label=name)
    except Exception:
        pass
    model_prop = inputs.str(
        "model",
        required=True,
        label="Model",
        description=(
            "A FiftyOne zoo model name, or a fiftyone_qdrant.models name such as "
            "'open_clip:ViT-B-32' (models that embed prompts enable text search)"
        ),
        view=model_choices,
    )
    kwargs_prop = inputs.str(
        "model_kwargs",
        label="Model kwargs (JSON)",
        description='e.g. {"pretrained": "/path/to/checkpoint.pt"}',
    )
    # checked here, so that Execute stays disabled until the spec is valid
    problem = model_spec_problem(ctx.params.get("model"), ctx.params.get("model_kwargs"))
    if problem is not None:
        field, message = problem
        prop = kwargs_prop if field == "model_kwargs" else model_prop
        prop.invalid = True
        prop.error_message = message
    inputs.int("batch_size", default=32, min=1, label="Batch size", description="Images per model batch")


def _roll_back(dataset, brain_key: str, index) -> None:
    try:
        index.cleanup()
    except Exception as e:
        logger.warning("Could not delete the collection of the failed build: %s", e)
    try:
        if dataset.has_brain_run(brain_key):
            dataset.delete_brain_run(brain_key)
    except Exception as e:
        logger.warning("Could not delete the failed brain run '%s': %s", brain_key, e)


# -- sort ----------------------------------------------------------------------

DIST_FIELD = "qdrant_distance"
DEFAULT_K = 25
QUERY_TYPES = (
    ("selection", "Selected samples or patches"),
    ("text", "Text prompt"),
    ("image", "Image file path or URL"),
    ("upload", "Upload an image"),
)
MAX_UPLOAD_BYTES = 10 * 1024 * 1024


def _run_config(dataset, brain_key: str) -> Dict[str, Any]:
    return dict(dataset._doc.brain_methods[brain_key].config or {})


def sortable_brain_keys(dataset, view) -> List[str]:
    """The Qdrant runs that can sort ``view``: on a patches view, the
    indexes of its patches field; else every index of the dataset."""
    keys = qdrant_brain_keys(dataset)
    if getattr(view, "_is_patches", False):
        field = getattr(view, "patches_field", None)
        return [k for k in keys if _run_config(dataset, k).get("patches_field") == field]
    return keys


def _selected_query_ids(ctx, view, patches_field: Optional[str]) -> List[str]:
    """The ids to query by: the selected grid items (samples, or patches on a
    patches view), or for a patches index on a samples view the selected
    labels of its field."""
    if patches_field and not getattr(view, "_is_patches", False):
        return [s["label_id"] for s in ctx.selected_labels or [] if s.get("field") == patches_field]
    return list(ctx.selected or [])


def _uploaded_image(upload) -> np.ndarray:
    import base64

    import eta.core.image as etai

    content = (upload or {}).get("content") if isinstance(upload, dict) else upload
    name = (upload or {}).get("name", "the upload") if isinstance(upload, dict) else "the upload"
    if not isinstance(content, str) or not content:
        raise ValueError("Upload an image to query by")
    if len(content) > MAX_UPLOAD_BYTES * 4 // 3 + 8:
        raise ValueError("'%s' is larger than %d MB" % (name, MAX_UPLOAD_BYTES // 2**20))
    try:
        return etai.decode(base64.b64decode(content.split(",", 1)[-1], validate=True))
    except Exception:
        raise ValueError("'%s' is not an image that can be decoded" % name) from None


def similarity_query(ctx, view, brain_key: str):
    """The query that ``ctx.params`` describe: ids, a prompt, an image path
    or URL, or an uploaded image (decoded)."""
    params = ctx.params
    query_type = params.get("query_type") or "selection"
    patches_field = _run_config(ctx.dataset, brain_key).get("patches_field")
    if query_type == "selection":
        ids = _selected_query_ids(ctx, view, patches_field)
        if not ids:
            raise ValueError(
                "Select the %s to sort by first" % ("patches (or their labels)" if patches_field else "samples")
            )
        return ids
    if query_type == "text":
        prompt = (params.get("prompt") or "").strip()
        if not prompt:
            raise ValueError("Type a text prompt")
        return prompt
    if query_type == "image":
        location = (params.get("image") or "").strip()
        if not location:
            raise ValueError("Give the path or URL of an image")
        location = os.path.expanduser(location)
        if not location.lower().startswith(("http://", "https://")) and not os.path.isfile(location):
            raise ValueError("No image file at '%s' (on the machine that serves the App)" % location)
        return location
    if query_type == "upload":
        return _uploaded_image(params.get("upload"))
    raise ValueError("Unknown query type %r" % query_type)


def _distance_expr(ids: List[str], dists: List[float]) -> Dict[str, Any]:
    """A MongoDB expression: the distance of the document's id in the
    results, else null. Evaluated by the view: nothing is written."""
    return {
        "$let": {
            "vars": {"i": {"$indexOfArray": [ids, {"$toString": "$_id"}]}},
            "in": {"$cond": [{"$gte": ["$$i", 0]}, {"$arrayElemAt": [dists, "$$i"]}, None]},
        }
    }


def ensure_dist_field(dataset, dist_field: str) -> bool:
    """Declares ``dist_field`` (a float field) so that the App can show it;
    returns whether it was new. Only the schema entry is stored: the values
    exist in the sorted view."""
    existing = dataset.get_field(dist_field)
    if existing is None:
        dataset.add_sample_field(
            dist_field,
            fo.FloatField,
            description="Distance to the last similarity query of the Qdrant plugin (set by its view, not stored)",
        )
        return True
    if not isinstance(existing, fo.FloatField):
        raise ValueError(
            "Field '%s' exists and is a %s, not a float field: choose another distance field"
            % (dist_field, type(existing).__name__)
        )
    return False


def sort_by_similarity_with_distances(view, brain_key: str, query, k: Optional[int] = DEFAULT_K,
                                      dist_field: str = DIST_FIELD, reverse: bool = False):
    """Sorts ``view`` by similarity to ``query`` (ids, a prompt, an image
    path/URL/array or vectors) with index ``brain_key``.

    Returns ``(sorted_view, ids, dists)``: the view shows the ``k`` results in
    order, each with its distance in ``dist_field``, computed by the view
    itself (a ``set_field`` stage), so that no value is written to the
    dataset and an earlier query's distances never linger. On a patches
    index the view is a patches view of the index's field.
    """
    dataset = view._root_dataset
    config = _run_config(dataset, brain_key)
    patches_field = config.get("patches_field")
    is_patches = getattr(view, "_is_patches", False)
    if patches_field:
        if is_patches and getattr(view, "patches_field", None) != patches_field:
            raise ValueError(
                "Index '%s' indexes the patches of '%s'; this is a patches view of '%s'"
                % (brain_key, patches_field, view.patches_field)
            )
        search_view = view if is_patches else view.to_patches(patches_field)
    elif is_patches:
        raise ValueError("Index '%s' indexes whole samples: leave the patches view to sort by it" % brain_key)
    else:
        search_view = view

    ensure_dist_field(dataset, dist_field)
    index = dataset.load_brain_results(brain_key)
    with contextlib.ExitStack() as context:
        if search_view.view() != index.view.view():
            index.use_view(search_view)
            context.enter_context(index)
        sample_ids, label_ids, dists = index._kneighbors(
            query=index._parse_query(query), k=k, reverse=reverse, aggregation="mean", return_dists=True
        )
    ids = [str(i) for i in (label_ids if patches_field else sample_ids)]
    dists = [float(d) for d in dists]

    if patches_field:
        source = view._source_collection if is_patches else view
        shown = source.to_patches(patches_field, other_fields=[dist_field])
    else:
        shown = view
    shown = shown.set_field(dist_field, _distance_expr(ids, dists)).select(ids, ordered=True)
    return shown, ids, dists


def _query_inputs(inputs: types.Object, ctx, view, query_type: str, config: Dict[str, Any]) -> None:
    """The form's inputs for one kind of query."""
    if query_type == "selection":
        ids = _selected_query_ids(ctx, view, config.get("patches_field"))
        if ids:
            inputs.view("selected", types.Notice(label="Query: the mean of %d selected item(s)" % len(ids)))
        else:
            prop = inputs.view(
                "selected",
                types.Warning(
                    label="Nothing is selected",
                    description="Select %s in the grid, or choose another query"
                    % ("patches" if config.get("patches_field") else "samples"),
                ),
            )
            prop.invalid = True
            prop.error_message = "Nothing is selected"
    elif query_type == "text":
        inputs.str("prompt", required=True, label="Prompt", description="e.g. 'a red circle'")
    elif query_type == "image":
        prop = inputs.str(
            "image",
            required=True,
            label="Image path or URL",
            description="A file on the machine that serves the App, or an http(s) URL",
        )
        location = (ctx.params.get("image") or "").strip()
        if location and not location.lower().startswith(("http://", "https://")) and not os.path.isfile(
            os.path.expanduser(location)
        ):
            prop.invalid = True
            prop.error_message = "No such file: %s" % location
    else:
        inputs.define_property(
            "upload",
            types.UploadedFile(),
            required=True,
            label="Image",
            view=types.FileView(
                label="Image",
                types=".png,.jpg,.jpeg,.gif,.bmp,.webp,.tif,.tiff",
                max_size=MAX_UPLOAD_BYTES,
                max_size_error_message="Images up to %d MB" % (MAX_UPLOAD_BYTES // 2**20),
            ),
        )


class SortByQdrantSimilarity(foo.Operator):
    """Sorts the grid by similarity with a Qdrant index, showing each
    result's distance.

    Params: ``brain_key``; ``query_type``: ``selection`` (the selected
    samples, or patches), ``text`` (``prompt``), ``image`` (a file path or
    URL, ``image``) or ``upload`` (an uploaded image, ``upload``); ``k``
    (default 25); ``dist_field`` (default ``qdrant_distance``).

    The App shows the results in order with their distances in
    ``dist_field``: the field is declared on the dataset (once; its stored
    values stay empty) and filled by the view, so the dataset holds no
    stale scores.
    """

    @property
    def config(self):
        return _config(
            name="sort_by_qdrant_similarity",
            label="Sort by Qdrant similarity",
            description="Sort by similarity to samples, patches, a text prompt or an image, with distances",
            dynamic=True,
            icon="image_search",
            risk_level="low",
            view_target=False,
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(label="Sort by Qdrant similarity", icon="image_search", prompt=True),
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        view = ctx.view
        keys = sortable_brain_keys(ctx.dataset, view) if ctx.dataset is not None else []
        if not keys:
            prop = inputs.view(
                "none",
                types.Warning(
                    label="No Qdrant index can sort this view",
                    description="Build one with 'Build Qdrant similarity index'"
                    + (" on this patches field" if getattr(view, "_is_patches", False) else ""),
                ),
            )
            prop.invalid = True
            prop.error_message = "No Qdrant index can sort this view"
            return types.Property(inputs, view=types.View(label="Sort by Qdrant similarity"))

        key_choices = types.DropdownView()
        for key in keys:
            patches = _run_config(ctx.dataset, key).get("patches_field")
            key_choices.add_choice(key, label=key + (" (patches: %s)" % patches if patches else ""))
        inputs.enum("brain_key", key_choices.values(), required=True, default=keys[0], label="Index", view=key_choices)
        brain_key = ctx.params.get("brain_key") or keys[0]
        if brain_key not in keys:
            brain_key = keys[0]
        config = _run_config(ctx.dataset, brain_key)

        type_choices = types.RadioGroup()
        for value, label in QUERY_TYPES:
            if value == "text" and not config.get("supports_prompts"):
                continue
            if value in ("image", "upload") and not (config.get("model_spec") or config.get("model")):
                continue
            type_choices.add_choice(value, label=label)
        query_types = type_choices.values()
        inputs.enum("query_type", query_types, default="selection", label="Query", view=type_choices)
        query_type = ctx.params.get("query_type") or "selection"
        if query_type not in query_types:
            query_type = "selection"

        _query_inputs(inputs, ctx, view, query_type, config)
        inputs.int("k", default=DEFAULT_K, min=1, label="Number of results")
        prop = inputs.str(
            "dist_field",
            default=DIST_FIELD,
            label="Distance field",
            description="Shows each result's distance on the grid (declared once; no values are stored)",
        )
        name = ctx.params.get("dist_field") or DIST_FIELD
        existing = ctx.dataset.get_field(name) if "." not in name else None
        if "." in name or (existing is not None and not isinstance(existing, fo.FloatField)):
            prop.invalid = True
            prop.error_message = "'%s' is not a float field: choose another name for the distances" % name
        return types.Property(inputs, view=types.View(label="Sort by Qdrant similarity"))

    @reports_failures
    def execute(self, ctx):
        params = ctx.params
        view = ctx.view
        keys = sortable_brain_keys(ctx.dataset, view)
        brain_key = params.get("brain_key") or (keys[0] if keys else None)
        if not brain_key or brain_key not in qdrant_brain_keys(ctx.dataset):
            raise ValueError("Dataset '%s' has no Qdrant similarity index '%s'" % (ctx.dataset.name, brain_key))
        dist_field = params.get("dist_field") or DIST_FIELD
        k = int(params.get("k") or DEFAULT_K)
        query = similarity_query(ctx, view, brain_key)
        if ensure_dist_field(ctx.dataset, dist_field):
            ctx.ops.reload_dataset()  # the App learns the new field before the view that sets it
        sorted_view, ids, dists = sort_by_similarity_with_distances(view, brain_key, query, k=k, dist_field=dist_field)
        ctx.ops.set_view(view=sorted_view)
        active = list(ctx.active_fields or [])
        if dist_field not in active:
            ctx.ops.set_active_fields(fields=active + [dist_field])
        message = "Sorted by similarity with '%s': %d results, distances in '%s'" % (brain_key, len(ids), dist_field)
        ctx.ops.notify(message, variant="success")
        return {"message": message, "ids": ids, "distances": dists, "dist_field": dist_field}


# -- list ----------------------------------------------------------------------


def run_status(record: Dict[str, Any], collection_name: str) -> str:
    """Whether the run named by a stored record still exists in FiftyOne."""
    dataset_name, brain_key = record.get("dataset_name"), record.get("brain_key")
    if not dataset_name or not fo.dataset_exists(dataset_name):
        return "orphan: dataset deleted"
    dataset = fo.load_dataset(dataset_name)
    run_doc = dataset._doc.brain_methods.get(brain_key)
    if run_doc is None:
        return "orphan: brain run deleted"
    if (run_doc.config or {}).get("collection_name") not in (None, collection_name):
        return "orphan: brain run uses another collection"
    return "attached"


def index_rows(indexes: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per (collection, stored run record), for display."""
    rows = []
    for entry in indexes:
        runs = entry.get("runs") or [{}]
        for record in runs:
            config = record.get("config") or {}
            rows.append(
                {
                    "collection_name": entry["collection_name"],
                    "size": entry.get("size"),
                    "dataset_name": record.get("dataset_name"),
                    "brain_key": record.get("brain_key"),
                    "dimension": record.get("dimension"),
                    "metric": record.get("metric") or config.get("metric"),
                    "model": record.get("model") or (record.get("model_spec") or {}).get("model"),
                    "patches_field": record.get("patches_field"),
                    "created_at": record.get("created_at"),
                    "status": run_status(record, entry["collection_name"]) if record else "orphan: no run record",
                }
            )
            row = rows[-1]
            row["patches"] = row["patches_field"] or "whole images"
            row["details"] = " · ".join(
                str(part)
                for part in (
                    row["metric"],
                    "%s-d" % row["dimension"] if row["dimension"] else None,
                    row["model"] or ("embeddings" if record else None),
                    "created %s" % str(row["created_at"])[:16].replace("T", " ") if row["created_at"] else None,
                )
                if part
            )
    return rows


def _run_connection(dataset, key: str, default: Dict[str, Any]) -> Dict[str, Any]:
    """Where a run's collection lives: its own embedded ``path`` when its
    config stores one, else the given/default connection."""
    config = dataset._doc.brain_methods[key].config or {}
    if config.get("path") and "url" not in default:
        return {"path": config["path"]}
    return dict(default)


def missing_collections(dataset, default: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Qdrant runs of ``dataset`` whose collection no longer exists."""
    rows = []
    for key in qdrant_brain_keys(dataset):
        name = (dataset._doc.brain_methods[key].config or {}).get("collection_name")
        if name and not resolve_settings(**_run_connection(dataset, key, default)).open().collection_exists(name):
            rows.append({"brain_key": key, "collection_name": name})
    return rows


def stores_to_list(ctx) -> List[Tuple[Dict[str, Any], str]]:
    """``(connection, description)`` of the store given in the params; else
    of the default store plus the embedded stores that the current
    dataset's runs use."""
    conn = connection_kwargs(ctx)
    targets = [conn]
    if not ctx.params.get("path") and not ctx.params.get("url") and ctx.dataset is not None:
        for key in qdrant_brain_keys(ctx.dataset):
            target = _run_connection(ctx.dataset, key, conn)
            if target not in targets:
                targets.append(target)
    unique: Dict[str, Dict[str, Any]] = {}
    for target in targets:
        unique.setdefault(resolve_settings(**target).describe(), target)
    return [(target, where) for where, target in unique.items()]


def _short_store_name(target: Dict[str, Any], where: str) -> str:
    """A store's name for a table cell: its URL, or its directory's name."""
    if target.get("url"):
        return target["url"]
    if target.get("path"):
        return os.path.basename(os.path.normpath(target["path"]))
    return where


class ListQdrantIndexes(foo.Operator):
    """Lists the collections of a Qdrant store with their stored run records.

    Returns ``{"store", "indexes", "rows", "missing"}``: ``indexes`` as
    :func:`fiftyone_qdrant.list_indexes` returns them, ``rows`` one per
    run record with its status (``attached``, or why it is an orphan), and
    ``missing`` the current dataset's Qdrant runs whose collection is gone.

    Without ``path``/``url`` it lists the default store and every embedded
    store that the current dataset's runs use.
    """

    @property
    def config(self):
        return _config(
            name="list_qdrant_indexes",
            label="List Qdrant indexes",
            description="Collections in the Qdrant store and the FiftyOne runs stored with them",
            dynamic=True,  # resolve_output sees the results (a Store column for several stores)
            icon="list",
            risk_level="low",
            view_target=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        inputs.md(
            "Lists every collection of the Qdrant store with its size and the FiftyOne "
            "run records kept in the collection (dataset, brain key, model...)."
        )
        _store_inputs(inputs)
        return types.Property(inputs, view=types.View(label="List Qdrant indexes"))

    @reports_failures
    def execute(self, ctx):
        stores, indexes, rows = [], [], []
        for target, where in stores_to_list(ctx):
            found = catalog.list_indexes(**target)
            for entry in found:
                entry["store"] = where
            for row in index_rows(found):
                # the brain key; with its dataset when that is not this one
                if not row["brain_key"]:
                    row["run"] = "-"
                elif ctx.dataset is not None and row["dataset_name"] == ctx.dataset.name:
                    row["run"] = row["brain_key"]
                else:
                    row["run"] = "%s (dataset %s)" % (row["brain_key"], row["dataset_name"])
                row["store"] = where
                row["store_name"] = _short_store_name(target, where)
                rows.append(row)
            stores.append(where)
            indexes.extend(found)
        return {
            "store": stores[0],
            "stores": stores,
            "indexes": indexes,
            "rows": rows,
            "missing": missing_collections(ctx.dataset, connection_kwargs(ctx)) if ctx.dataset is not None else [],
        }

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.list("stores", types.String(), label="Stores")
        # few columns, so that the table fits the dialog without wrapping
        # collection names; the store of each row when several are listed
        table = types.TableView()
        columns = [
            ("collection_name", "Collection"),
            ("run", "Run"),
            ("status", "Status"),
            ("size", "Vectors"),
            ("patches", "Patches"),
            ("details", "Index"),
        ]
        if len(ctx.results.get("stores") or []) > 1:
            columns.append(("store_name", "Store"))
        for key, label in columns:
            table.add_column(key, label=label)
        outputs.list("rows", types.Object(), label="Indexes", view=table)
        missing = types.TableView()
        missing.add_column("brain_key", label="Brain key")
        missing.add_column("collection_name", label="Missing collection")
        outputs.list("missing", types.Object(), label="Runs of this dataset without a collection", view=missing)
        return types.Property(outputs, view=types.View(label="Qdrant indexes"))


# -- delete --------------------------------------------------------------------


def runs_using_collection(store, collection_name: str) -> List[Any]:
    """(dataset, brain_key) of live runs that use ``collection_name``,
    from the run records stored in the collection."""
    found = []
    metadata = store.get_metadata(collection_name) if store.collection_exists(collection_name) else {}
    for record in (metadata.get(records.RUNS_KEY) or {}).values():
        if run_status(record, collection_name) == "attached":
            found.append((record["dataset_name"], record["brain_key"]))
    return found


def _deletion_summary(ctx) -> Optional[str]:
    """What the delete operator's params would delete, in words."""
    params = ctx.params
    if params.get("target", "brain_run") == "brain_run":
        key = params.get("brain_key")
        if not key or ctx.dataset is None or key not in qdrant_brain_keys(ctx.dataset):
            return None
        config = _run_config(ctx.dataset, key)
        if params.get("delete_collection", True):
            return "brain run '%s' and its Qdrant collection '%s' (its vectors are lost)" % (
                key, config.get("collection_name") or "?")
        return "brain run '%s' (the collection '%s' is kept)" % (key, config.get("collection_name") or "?")
    name = params.get("collection_name")
    if not name:
        return None
    return "Qdrant collection '%s' and all its vectors%s" % (
        name, ", and the brain runs that use it" if params.get("delete_runs") else "")


def _confirm_input(inputs: types.Object, ctx) -> None:
    """A checkbox that must be ticked before Execute: deleting cannot be undone."""
    summary = _deletion_summary(ctx)
    if summary is None:
        return
    inputs.view("summary", types.Warning(label="This permanently deletes the " + summary))
    prop = inputs.bool(
        "confirm",
        default=False,
        required=True,
        label="Yes, delete it",
        description="Deleting cannot be undone",
    )
    if not ctx.params.get("confirm"):
        prop.invalid = True
        prop.error_message = "Tick 'Yes, delete it' to confirm"


class DeleteQdrantIndex(foo.Operator):
    """Deletes a Qdrant index.

    ``target="brain_run"``: delete the current dataset's run ``brain_key``
    and (``delete_collection=True``, the default) its collection.
    ``target="collection"``: delete ``collection_name`` from the store,
    e.g. an orphan; if live runs still use it, ``delete_runs=True`` deletes
    them too, else the operator refuses.
    """

    @property
    def config(self):
        return _config(
            name="delete_qdrant_index",
            label="Delete Qdrant index",
            description="Delete a Qdrant brain run and/or its collection",
            dynamic=True,
            icon="delete",
            risk_level="high",
            view_target=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        target_choices = types.RadioGroup()
        target_choices.add_choice("brain_run", label="A brain run of this dataset")
        target_choices.add_choice("collection", label="A collection of the Qdrant store (e.g. an orphan)")
        inputs.enum("target", target_choices.values(), default="brain_run", label="Delete", view=target_choices)

        if ctx.params.get("target", "brain_run") == "brain_run":
            keys = qdrant_brain_keys(ctx.dataset)
            if not keys:
                prop = inputs.view("none", types.Warning(label="This dataset has no Qdrant similarity runs"))
                prop.invalid = True
                prop.error_message = "This dataset has no Qdrant similarity runs"
            else:
                choices = types.DropdownView()
                for key in keys:
                    choices.add_choice(key, label=key)
                inputs.enum("brain_key", choices.values(), required=True, label="Brain key", view=choices)
                inputs.bool(
                    "delete_collection",
                    default=True,
                    label="Also delete the Qdrant collection",
                    description="Unchecked: forget the run but keep the vectors (re-attach them later)",
                )
        else:
            _store_inputs(inputs)
            try:
                names = resolve_settings(**connection_kwargs(ctx)).open().list_collections()
            except Exception as e:
                names = []
                inputs.view("error", types.Warning(label="Cannot open the Qdrant store", description=str(e)))
            choices = types.DropdownView()
            for name in names:
                choices.add_choice(name, label=name)
            inputs.enum("collection_name", choices.values(), required=True, label="Collection", view=choices)
            inputs.bool(
                "delete_runs",
                default=False,
                label="Also delete the brain runs that use it",
                description="Required when a dataset still uses this collection",
            )
        _confirm_input(inputs, ctx)
        return types.Property(inputs, view=types.View(label="Delete Qdrant index"))

    @reports_failures
    def execute(self, ctx):
        params = ctx.params
        if not params.get("confirm"):
            raise ValueError("Nothing was deleted: confirm the deletion (confirm=True)")
        target = params.get("target") or ("collection" if params.get("collection_name") and not params.get("brain_key") else "brain_run")
        deleted_runs: List[str] = []
        deleted_collection = None

        if target == "brain_run":
            dataset = ctx.dataset
            brain_key = params.get("brain_key")
            if not brain_key or not dataset.has_brain_run(brain_key):
                raise ValueError("Dataset '%s' has no brain run '%s'" % (dataset.name, brain_key))
            if brain_key not in qdrant_brain_keys(dataset):
                raise ValueError("Brain run '%s' is not a Qdrant similarity run" % brain_key)
            if params.get("delete_collection", True):
                results = dataset.load_brain_results(brain_key, cache=False, **connection_kwargs(ctx))
                deleted_collection = results.collection_name
                results.cleanup()
            dataset.delete_brain_run(brain_key)
            deleted_runs.append("%s/%s" % (dataset.name, brain_key))
        else:
            name = params.get("collection_name")
            if not name:
                raise ValueError("A collection name is required")
            store = resolve_settings(**connection_kwargs(ctx)).open()
            if not store.collection_exists(name):
                raise ValueError("Collection '%s' does not exist in the %s" % (name, store.location))
            users = runs_using_collection(store, name)
            if users and not params.get("delete_runs"):
                raise ValueError(
                    "Collection '%s' is used by %s; delete those brain runs, or pass delete_runs=True"
                    % (name, ", ".join("%s/%s" % u for u in users))
                )
            for dataset_name, brain_key in users:
                fo.load_dataset(dataset_name).delete_brain_run(brain_key)
                deleted_runs.append("%s/%s" % (dataset_name, brain_key))
            store.delete_collection(name)
            deleted_collection = name

        if ctx.dataset is not None:
            ctx.ops.reload_dataset()
        parts = []
        if deleted_runs:
            parts.append("brain run(s) %s" % ", ".join(deleted_runs))
        if deleted_collection:
            parts.append("collection '%s'" % deleted_collection)
        message = "Deleted " + " and ".join(parts)
        ctx.ops.notify(message, variant="success")
        return {"message": message, "deleted_runs": deleted_runs, "deleted_collection": deleted_collection}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        return types.Property(outputs, view=types.View(label="Deleted"))


# -- attach --------------------------------------------------------------------


class AttachQdrantIndex(foo.Operator):
    """Re-attaches an existing collection to the current dataset as a brain
    run, using the run record stored in the collection (the vectors are not
    modified)."""

    @property
    def config(self):
        return _config(
            name="attach_qdrant_index",
            label="Attach Qdrant index",
            description="Use an existing Qdrant collection as a similarity index of this dataset",
            dynamic=True,
            icon="link",
            risk_level="medium",
            view_target=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _store_inputs(inputs)
        try:
            names = resolve_settings(**connection_kwargs(ctx)).open().list_collections()
        except Exception as e:
            names = []
            inputs.view("error", types.Warning(label="Cannot open the Qdrant store", description=str(e)))
        choices = types.DropdownView()
        for name in names:
            choices.add_choice(name, label=name)
        inputs.enum("collection_name", choices.values(), required=True, label="Collection", view=choices)
        prop = inputs.str(
            "brain_key",
            label="Brain key",
            description="Default: the brain key stored with the collection",
        )
        key = ctx.params.get("brain_key")
        if key and ctx.dataset is not None and ctx.dataset.has_brain_run(key):
            prop.invalid = True
            prop.error_message = "Brain key '%s' already exists" % key
        return types.Property(inputs, view=types.View(label="Attach Qdrant index"))

    @reports_failures
    def execute(self, ctx):
        name = ctx.params.get("collection_name")
        if not name:
            raise ValueError("A collection name is required")
        index = catalog.attach_index(
            ctx.dataset, name, brain_key=ctx.params.get("brain_key") or None, **connection_kwargs(ctx)
        )
        ctx.ops.reload_dataset()
        message = "Attached collection '%s' as brain key '%s' (%d vectors)" % (
            name,
            index.key,
            index.total_index_size,
        )
        ctx.ops.notify(message, variant="success")
        return {"message": message, "brain_key": index.key}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        return types.Property(outputs, view=types.View(label="Attached"))


# -- migrate -------------------------------------------------------------------


class MigrateBuiltinQdrantRuns(foo.Operator):
    """Rewrites the current dataset's runs made by FiftyOne's built-in
    Qdrant backend to fiftyone-qdrant's classes (``brain_keys``: default
    all of them) and stores their run records with their collections."""

    @property
    def config(self):
        return _config(
            name="migrate_builtin_qdrant_runs",
            label="Migrate built-in Qdrant runs",
            description="Move runs made by FiftyOne's built-in Qdrant backend to fiftyone-qdrant",
            dynamic=True,
            icon="sync",
            risk_level="medium",
            view_target=False,
        )

    def resolve_input(self, ctx):
        from fiftyone_qdrant.migration import builtin_run_keys

        inputs = types.Object()
        keys = builtin_run_keys(ctx.dataset) if ctx.dataset is not None else []
        if not keys:
            prop = inputs.view(
                "none",
                types.Notice(label="This dataset has no runs of FiftyOne's built-in Qdrant backend"),
            )
            prop.invalid = True
            prop.error_message = "This dataset has no runs of FiftyOne's built-in Qdrant backend"
        else:
            choices = types.DropdownView(multiple=True)
            for key in keys:
                choices.add_choice(key, label=key)
            inputs.list(
                "brain_keys",
                types.String(),
                default=keys,
                label="Brain keys",
                description="The runs to migrate",
                view=choices,
            )
        _store_inputs(inputs)
        return types.Property(inputs, view=types.View(label="Migrate built-in Qdrant runs"))

    @reports_failures
    def execute(self, ctx):
        from fiftyone_qdrant.migration import migrate_builtin_runs

        keys = ctx.params.get("brain_keys") or None
        migrated = migrate_builtin_runs(ctx.dataset, brain_keys=keys, **connection_kwargs(ctx))
        ctx.ops.reload_dataset()
        message = "Migrated %d run(s): %s" % (len(migrated), ", ".join(migrated) or "none")
        ctx.ops.notify(message, variant="success")
        return {"message": message, "migrated": migrated}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.str("message", label="Result")
        return types.Property(outputs, view=types.View(label="Migrated"))


# -- status --------------------------------------------------------------------


class QdrantStatus(foo.Operator):
    """What this App server process holds: the local Qdrant service of each
    embedded store it uses, and the prompt models kept warm
    (:func:`fiftyone_qdrant.models.model_cache_info`).

    Shows why a text prompt is fast or slow: after the first prompt of an
    index, ``loads`` stays the same and ``hits`` counts the prompts.
    """

    @property
    def config(self):
        return _config(
            name="qdrant_status",
            label="Qdrant status",
            description="The local Qdrant services and the prompt models this App server keeps warm",
            icon="info",
            risk_level="low",
            view_target=False,
        )

    def resolve_input(self, ctx):
        inputs = types.Object()
        _store_inputs(inputs)
        return types.Property(inputs, view=types.View(label="Qdrant status"))

    @reports_failures
    def execute(self, ctx):
        from fiftyone_qdrant import local, models

        services = []
        for target, where in stores_to_list(ctx):
            settings = resolve_settings(**target)
            if settings.url is None:
                status = local.service_status(settings.store_path)
                services.append({"store": where, "running": status is not None,
                                 "pid": status["pid"] if status else None,
                                 "address": status["address"] if status else None})
        info = models.model_cache_info()
        return {"app_server_pid": os.getpid(), "services": services, "model_loads": info["loads"],
                "model_hits": info["hits"], "warm_models": info["warm"], "model_cache_size": info["size"]}

    def resolve_output(self, ctx):
        outputs = types.Object()
        outputs.int("app_server_pid", label="App server process")
        table = types.TableView()
        for key, label in (("store", "Store"), ("running", "Service running"), ("pid", "Service pid"),
                           ("address", "Address")):
            table.add_column(key, label=label)
        outputs.list("services", types.Object(), label="Local Qdrant services", view=table)
        outputs.int("model_loads", label="Prompt models loaded")
        outputs.int("model_hits", label="Prompts answered by a warm model")
        outputs.list("warm_models", types.String(), label="Warm models")
        return types.Property(outputs, view=types.View(label="Qdrant status"))


OPERATORS = (
    BuildQdrantIndex,
    SortByQdrantSimilarity,
    ListQdrantIndexes,
    DeleteQdrantIndex,
    AttachQdrantIndex,
    MigrateBuiltinQdrantRuns,
    QdrantStatus,
)
