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
``fiftyone_qdrant._bootstrap``).

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

import json
import logging
import math
from typing import Any, Dict, List, Optional, Tuple

import fiftyone as fo
import fiftyone.operators as foo
import fiftyone.operators.types as types

from fiftyone_qdrant.connection import resolve_settings

logger = logging.getLogger(__name__)

PLUGIN_NAME = "@fiftyone-qdrant/qdrant"
METRICS = ("cosine", "dotproduct", "euclidean", "manhattan")
DEFAULT_BATCH_SIZE = 256

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
            icon="search",
            risk_level="medium",
        )

    def resolve_placement(self, ctx):
        return types.Placement(
            types.Places.SAMPLES_GRID_SECONDARY_ACTIONS,
            types.Button(label="Build Qdrant similarity index", icon="search", prompt=True),
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
        else:
            model_choices = types.AutocompleteView()
            try:
                import fiftyone.zoo.models as fozm

                for name in fozm.list_zoo_models(tags="embeddings"):
                    model_choices.add_choice(name, label=name)
            except Exception:
                pass
            inputs.str(
                "model",
                required=True,
                label="Model",
                description=(
                    "A FiftyOne zoo model name, or a fiftyone_qdrant.models name such as "
                    "'open_clip:ViT-B-32' (models that embed prompts enable text search)"
                ),
                view=model_choices,
            )
            inputs.str(
                "model_kwargs",
                label="Model kwargs (JSON)",
                description='e.g. {"pretrained": "/path/to/checkpoint.pt"}',
            )
            inputs.int("batch_size", default=32, min=1, label="Batch size", description="Images per model batch")

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
        import fiftyone.brain as fob
        import fiftyone.brain.internal.core.utils as fbu

        params = ctx.params
        brain_key = params.get("brain_key")
        if not brain_key:
            raise ValueError("A brain key is required")
        dataset = ctx.dataset
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
            embeddings=False,  # register the index; we add vectors below
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
            model = _load_model(model_name, _parse_model_kwargs(params.get("model_kwargs")))
            kwargs["model"] = model
            what = "model '%s'" % model_name

        yield from _progress(ctx, 0.0, "Creating the index...")
        # a model built by fiftyone_qdrant.models records its spec, so
        # fiftyone-brain's "will not support prompt queries" warning is dropped
        # for it by that module's log filter, and kept where it is true
        index = fob.compute_similarity(view, **kwargs)
        try:
            if source == "model":
                model = index.get_model()
            ids = view.values("id")
            batch_size = int(params.get("batch_size") or 32) if source == "model" else DEFAULT_BATCH_SIZE
            step = max(1, min(batch_size * 4, DEFAULT_BATCH_SIZE)) if source == "model" else batch_size
            num_batches = max(1, math.ceil(len(ids) / step))
            added = 0
            for i in range(num_batches):
                batch = view.select(ids[i * step : (i + 1) * step])
                embeddings, sample_ids, label_ids = fbu.get_embeddings(
                    batch,
                    model=model if source == "model" else None,
                    patches_field=patches_field,
                    embeddings_field=embeddings_field if source == "field" else None,
                    batch_size=batch_size if source == "model" else None,
                    skip_failures=True,
                    progress=False,
                )
                if len(embeddings):
                    index.add_to_index(embeddings, sample_ids, label_ids=label_ids)
                    added += len(embeddings)
                done = min(len(ids), (i + 1) * step)
                yield from _progress(
                    ctx,
                    0.02 + 0.96 * (i + 1) / num_batches,
                    "Indexed %d of %d samples (%d vectors) from %s" % (done, len(ids), added, what),
                )
            if added == 0:
                raise ValueError("No embeddings were found in %s for this view" % what)
            index.save()
        except BaseException:
            _roll_back(dataset, brain_key, index)
            raise

        message = "Built Qdrant index '%s': %d vectors in collection '%s'" % (
            brain_key,
            index.total_index_size,
            index.collection_name,
        )
        logger.info(message)
        yield from _progress(ctx, 1.0, message)
        yield ctx.ops.notify(message, variant="success")
        yield ctx.ops.reload_dataset()


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
            dynamic=False,
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

    def execute(self, ctx):
        from fiftyone_qdrant import records

        stores, indexes, rows = [], [], []
        for target, where in stores_to_list(ctx):
            found = records.list_indexes(**target)
            for entry in found:
                entry["store"] = where
            for row in index_rows(found):
                row["store"] = where
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
        table = types.TableView()
        for key, label in (
            ("brain_key", "Brain key"),
            ("dataset_name", "Dataset"),
            ("status", "Status"),
            ("size", "Vectors"),
            ("collection_name", "Collection"),
            ("metric", "Metric"),
            ("dimension", "Dim"),
            ("model", "Model"),
            ("patches_field", "Patches"),
            ("created_at", "Created"),
            ("store", "Store"),
        ):
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
    from fiftyone_qdrant import records

    found = []
    metadata = store.get_metadata(collection_name) if store.collection_exists(collection_name) else {}
    for record in (metadata.get(records.RUNS_KEY) or {}).values():
        if run_status(record, collection_name) == "attached":
            found.append((record["dataset_name"], record["brain_key"]))
    return found


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
        return types.Property(inputs, view=types.View(label="Delete Qdrant index"))

    def execute(self, ctx):
        params = ctx.params
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

    def execute(self, ctx):
        from fiftyone_qdrant import records

        name = ctx.params.get("collection_name")
        if not name:
            raise ValueError("A collection name is required")
        index = records.attach_index(
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


OPERATORS = (
    BuildQdrantIndex,
    ListQdrantIndexes,
    DeleteQdrantIndex,
    AttachQdrantIndex,
    MigrateBuiltinQdrantRuns,
)
