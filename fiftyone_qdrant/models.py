"""Models for building Qdrant similarity indexes: resolve, stream embeddings, embed prompts.

Which models :func:`resolve_model` accepts
-------------------------------------------

-   A :class:`fiftyone.core.models.Model` instance, e.g.
    ``fiftyone.utils.open_clip.TorchOpenClipModel``: used as is, on its own
    device. Its ``spec`` is ``None`` (unless this module built it), so another
    process (e.g. the FiftyOne App server) cannot reload it for text prompts.
-   ``"open_clip:<ARCH>"`` with ``model_kwargs={"pretrained": <tag or path>}``:
    an `open_clip <https://github.com/mlfoundations/open_clip>`_ architecture
    (see ``open_clip.list_models()``) with a named pretrained tag (see
    ``open_clip.list_pretrained_tags_by_model(ARCH)``; downloaded once from
    the Hugging Face hub, then read from its cache) or a local checkpoint file
    (``.pt``, ``.bin``, ``.safetensors``). ``"open_clip:<ARCH>@<pretrained>"``
    is shorthand for the same. Further ``model_kwargs``:

    -   ``config_path``: an open_clip model config JSON for an architecture
        that is not built into open_clip; its file name without ``.json``
        must be ``ARCH``. It is registered with ``open_clip.add_model_config``
        in every process that loads the spec.
    -   ``text_prompt``: a prefix for every text prompt (default ``""``: the
        prompt is embedded verbatim; FiftyOne's zoo uses ``"A photo of"``).
    -   any other :class:`fiftyone.utils.open_clip.TorchOpenClipModelConfig`
        key, e.g. ``classes`` for zero-shot classification.

-   Any other string: a FiftyOne zoo model name (``fiftyone.zoo.load_zoo_model``),
    with ``model_kwargs`` passed to it.

The ``spec`` of a resolved model is JSON-serialisable and is what a run config
stores: ``{"model": "open_clip:ViT-B-32", "model_kwargs": {"pretrained":
"/abs/path/ckpt.pt"}}``. :func:`load_model_from_spec` rebuilds the model from
it in any process. The device is never part of the spec.

Devices: CUDA when available, else CPU, unless ``device="cpu" | "cuda" |
"cuda:1"`` is given. On CUDA, :func:`iter_embedding_batches` runs the model
under float16 autocast, with pinned host memory, non-blocking copies and the
next batch queued on the GPU while the caller handles the current one.

Offline use: a pretrained tag whose weights are not cached and cannot be
downloaded fails within seconds with a :class:`ValueError` that says how to
pass a local checkpoint (open_clip itself would retry for ~45 s first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

import numpy as np
import torch
import torch.utils.data
from PIL import Image

import fiftyone.core.labels as fol
import fiftyone.core.models as fom
import fiftyone.core.utils as fou
import fiftyone.core.validation as fov
import fiftyone.utils.open_clip as fouoc
import fiftyone.utils.patches as foup
import fiftyone.utils.torch as fout

from .batches import EmbeddingBatch, EmbeddingFailure, format_failures
from .views import count_rows

logger = logging.getLogger(__name__)

OPEN_CLIP_PREFIX = "open_clip:"
# Attribute under which a model built here carries its spec, so that code
# handed only the model instance (e.g. a brain run config) can still store it
SPEC_ATTRIBUTE = "_fiftyone_qdrant_spec"
DEFAULT_CPU_BATCH_SIZE = 32
DEFAULT_CUDA_BATCH_SIZE = 128
# How long to wait for the weights' host before declaring the machine offline
DOWNLOAD_PROBE_TIMEOUT_S = 5.0

# Like FiftyOne's "open-clip-torch" zoo model, so that ``model.embed_all()``,
# ``compute_embeddings()`` and ``apply_model()`` work on models built here:
# embeddings are the image tower's output, and the zero-shot head needs classes
_OPEN_CLIP_CONFIG_DEFAULTS = {
    "embeddings_layer": "visual",
    "output_processor_cls": "fiftyone.utils.torch.ClassifierOutputProcessor",
    "labels_path": "{{eta-resources}}/voc-labels.txt",
    "text_prompt": "",
}
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")

ModelSpec = Dict[str, Any]
ModelLike = Union["ResolvedModel", fom.Model]


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """A FiftyOne model plus what is needed to rebuild it in another process.

    Attributes:
        model: the :class:`fiftyone.core.models.Model` instance
        spec: JSON-serialisable ``{"model": str, "model_kwargs": dict}``, or
            ``None`` for a user-supplied instance (it cannot be reloaded)
    """

    model: fom.Model
    spec: Optional[ModelSpec]

    @property
    def supports_prompts(self) -> bool:
        """Whether the model embeds text prompts."""
        return supports_prompts(self.model)

    @property
    def device(self) -> torch.device:
        return _model_device(self.model)


# -- resolving models ---------------------------------------------------------


def parse_model_spec(model: str, model_kwargs: Optional[Mapping[str, Any]] = None) -> ModelSpec:
    """Normalises a model name and kwargs into the JSON spec stored in run configs.

    Expands the ``"open_clip:<ARCH>@<pretrained>"`` shorthand and makes local
    paths absolute, so that another process with another working directory
    loads the same files.
    """
    if not isinstance(model, str) or not model:
        raise ValueError("A model name must be a non-empty string, not %r" % (model,))
    kwargs = dict(model_kwargs or {})
    if "device" in kwargs:
        raise ValueError("Pass `device=` to resolve_model() rather than in model_kwargs: it is not part of the spec")

    if model.startswith(OPEN_CLIP_PREFIX):
        arch, has_tag, tag = model[len(OPEN_CLIP_PREFIX) :].partition("@")
        if not arch:
            raise ValueError("Missing architecture in %r; expected 'open_clip:<ARCH>', e.g. 'open_clip:ViT-B-32'" % model)
        if has_tag:
            if not tag:
                raise ValueError("Missing pretrained tag or path after '@' in %r" % model)
            if kwargs.get("pretrained", tag) != tag:
                raise ValueError(
                    "%r names pretrained=%r but model_kwargs has pretrained=%r" % (model, tag, kwargs["pretrained"])
                )
            kwargs["pretrained"] = tag
        if not kwargs.get("pretrained"):
            raise ValueError(
                "open_clip models need pretrained weights: pass model_kwargs={'pretrained': '<tag>'} "
                "(see open_clip.list_pretrained_tags_by_model(%r)) or {'pretrained': '/path/to/checkpoint.pt'}, "
                "or use the shorthand 'open_clip:%s@<tag or path>'" % (arch, arch)
            )
        for key in ("pretrained", "config_path"):
            if key in kwargs and _looks_like_path(kwargs[key]):
                kwargs[key] = os.path.abspath(os.path.expanduser(kwargs[key]))
        model = OPEN_CLIP_PREFIX + arch

    spec = {"model": model, "model_kwargs": kwargs}
    try:
        json.dumps(spec)
    except TypeError as error:
        raise ValueError("model_kwargs must be JSON-serialisable to be stored in the run config: %s" % error) from None
    return spec


def select_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """CUDA when available, else CPU; an explicit device is checked, not silently replaced."""
    if device is None:
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError("Invalid device %r: %s" % (device, error)) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device=%r was requested but CUDA is not available (torch.cuda.is_available() is False)" % str(device))
        index = 0 if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError("device=%r does not exist: %d CUDA device(s) visible" % (str(device), torch.cuda.device_count()))
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device='mps' was requested but MPS is not available")
    return device


def resolve_model(
    model: Union[str, fom.Model, ResolvedModel],
    model_kwargs: Optional[Mapping[str, Any]] = None,
    device: Union[str, torch.device, None] = None,
) -> ResolvedModel:
    """Turns a model instance, zoo name or ``"open_clip:..."`` spec into a :class:`ResolvedModel`.

    See the module docstring for the accepted syntax.

    Raises:
        ValueError: unknown architecture or tag, weights that cannot be
            downloaded, a checkpoint that does not match the architecture, or
            an unavailable device
    """
    if isinstance(model, ResolvedModel):
        model = model.model
    if isinstance(model, fom.Model):
        if model_kwargs:
            raise ValueError("model_kwargs only apply to model names, not to a model instance")
        if device is not None and select_device(device) != _model_device(model):
            raise ValueError(
                "The model instance is on %s; it cannot be moved to device=%r. "
                "Build it on that device, or pass a model name" % (_model_device(model), str(device))
            )
        return ResolvedModel(model, model_spec_of(model))
    if not isinstance(model, str):
        raise TypeError("model must be a fiftyone Model, a zoo model name or 'open_clip:<ARCH>', not %r" % type(model))

    spec = parse_model_spec(model, model_kwargs)
    instance = load_model_from_spec(spec, device=device)
    return ResolvedModel(instance, spec)


def load_model_from_spec(spec: Mapping[str, Any], device: Union[str, torch.device, None] = None) -> fom.Model:
    """Rebuilds a model from the JSON spec stored in a run config, in any process.

    The returned model carries its spec (see :func:`model_spec_of`). It is
    kept warm for the next call with the same spec and device in this
    process (see ``MODEL_CACHE_SIZE``): text prompts in the App server do not
    reload it per query.
    """
    if not isinstance(spec, Mapping) or not isinstance(spec.get("model"), str):
        raise ValueError("Invalid model spec %r: expected {'model': str, 'model_kwargs': dict}" % (spec,))
    spec = parse_model_spec(spec["model"], spec.get("model_kwargs"))
    device = select_device(device)
    key = _model_cache_key(spec, device)
    with _MODEL_CACHE_LOCK:
        model = _MODEL_CACHE.pop(key, None)
        if model is not None:
            _MODEL_CACHE[key] = model  # most recently used last
            _MODEL_CACHE_STATS["hits"] += 1
            return model
    model = _build_model_from_spec(spec, device)
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE_STATS["loads"] += 1
        if MODEL_CACHE_SIZE > 0:
            _MODEL_CACHE[key] = model
            while len(_MODEL_CACHE) > MODEL_CACHE_SIZE:
                _MODEL_CACHE.pop(next(iter(_MODEL_CACHE)))
    return model


# Models built from specs, kept warm per process: the App server embeds
# every text prompt with the model of the index, and FiftyOne reloads the
# index (hence the model) with the dataset. Keyed by spec, device and the
# identity (size, mtime) of the local files the spec names, so that a
# rewritten checkpoint is reloaded. FIFTYONE_QDRANT_MODEL_CACHE_SIZE=0
# turns the cache off.
MODEL_CACHE_SIZE = max(0, int(os.environ.get("FIFTYONE_QDRANT_MODEL_CACHE_SIZE", "2") or 0))
_MODEL_CACHE: "Dict[Tuple[Any, ...], fom.Model]" = {}
_MODEL_CACHE_LOCK = threading.Lock()
_MODEL_CACHE_STATS = {"loads": 0, "hits": 0}


def _model_cache_key(spec: Mapping[str, Any], device: torch.device) -> Tuple[Any, ...]:
    files = []
    for key in ("pretrained", "config_path"):
        value = spec["model_kwargs"].get(key)
        if isinstance(value, str) and os.path.isfile(value):
            stat = os.stat(value)
            files.append((value, stat.st_size, stat.st_mtime_ns))
    return (json.dumps(spec, sort_keys=True), str(device), tuple(files))


def clear_model_cache() -> None:
    """Drops the models kept warm by :func:`load_model_from_spec`."""
    with _MODEL_CACHE_LOCK:
        _MODEL_CACHE.clear()


def model_cache_info() -> Dict[str, Any]:
    """How this process's warm models have served: ``loads`` (models built
    from a spec), ``hits`` (calls answered by a warm model), ``warm`` (the
    specs' model names now kept) and ``size`` (``MODEL_CACHE_SIZE``).

    What the App's "Qdrant status" shows: a text prompt that reloads its
    model in the App server shows up as one more load."""
    with _MODEL_CACHE_LOCK:
        warm = [json.loads(key[0])["model"] for key in _MODEL_CACHE]
        return dict(_MODEL_CACHE_STATS, warm=warm, size=MODEL_CACHE_SIZE)


def _build_model_from_spec(spec: ModelSpec, device: torch.device) -> fom.Model:
    name, kwargs = spec["model"], dict(spec["model_kwargs"])
    if name.startswith(OPEN_CLIP_PREFIX):
        model = _load_open_clip(name[len(OPEN_CLIP_PREFIX) :], kwargs, device)
    else:
        model = _load_zoo_model(name, kwargs, device)
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model


def model_spec_of(model: ModelLike) -> Optional[ModelSpec]:
    """The spec a model was built from by this module, or ``None``."""
    if isinstance(model, ResolvedModel):
        return model.spec
    return getattr(model, SPEC_ATTRIBUTE, None)




def supports_prompts(model: ModelLike) -> bool:
    """Whether the model can embed text prompts (FiftyOne's PromptMixin)."""
    model = _fiftyone_model(model)
    return isinstance(model, fom.PromptMixin) and bool(model.can_embed_prompts)


def embed_prompts(model: ModelLike, prompts: Union[str, Sequence[str]]) -> np.ndarray:
    """Embeds text prompts as a ``num_prompts x dim`` float32 array.

    A thin wrapper over FiftyOne's ``PromptMixin.embed_prompts`` that runs
    without autograd (FiftyOne's open_clip wrapper builds a graph otherwise).
    """
    model = _fiftyone_model(model)
    if not supports_prompts(model):
        raise ValueError("Model %s cannot embed text prompts" % type(model).__name__)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("No prompts given")
    with torch.inference_mode():
        embeddings = model.embed_prompts(prompts)
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.float().cpu().numpy()
    return np.asarray(embeddings, dtype=np.float32).reshape(len(prompts), -1)


def _load_open_clip(arch: str, kwargs: Dict[str, Any], device: torch.device) -> fouoc.TorchOpenClipModel:
    """Builds FiftyOne's open_clip wrapper after checking, cheaply and
    offline, what open_clip would otherwise discover slowly or cryptically."""
    import open_clip

    config_path = kwargs.pop("config_path", None)
    if config_path is not None:
        _register_open_clip_config(arch, config_path)
    if arch not in open_clip.list_models():
        raise ValueError(
            "Unknown open_clip architecture %r. Use one of open_clip.list_models(), or pass "
            "model_kwargs={'config_path': '/path/to/%s.json'} for a custom config" % (arch, arch)
        )
    pretrained = kwargs.pop("pretrained")
    weights_are_cached = _check_pretrained_available(arch, pretrained)
    config = fouoc.TorchOpenClipModelConfig(
        {**_OPEN_CLIP_CONFIG_DEFAULTS, **kwargs, "clip_model": arch, "pretrained": pretrained, "device": str(device)}
    )
    try:
        with _hf_hub_offline(weights_are_cached):
            return fouoc.TorchOpenClipModel(config)
    except Exception as error:  # torch.load raises anything from UnpicklingError to IndexError
        raise ValueError(_explain_open_clip_failure(arch, pretrained, error)) from error


def _load_zoo_model(name: str, kwargs: Dict[str, Any], device: torch.device) -> fom.Model:
    """``load_zoo_model``, with the open_clip checks for zoo models built on open_clip
    (e.g. ``"open-clip-torch"``, whose ``pretrained`` tag open_clip downloads)."""
    import fiftyone.zoo as foz

    weights_are_cached = False
    deployment = foz.get_zoo_model(name).default_deployment_config_dict or {}
    if deployment.get("type", "").endswith("TorchOpenClipModel"):
        config = {**deployment.get("config", {}), **kwargs}
        arch = config.get("clip_model", "ViT-B-32")  # TorchOpenClipModelConfig's defaults
        pretrained = config.get("pretrained", "openai")
        weights_are_cached = _check_pretrained_available(arch, pretrained)
    with _hf_hub_offline(weights_are_cached):
        return foz.load_zoo_model(name, device=str(device), **kwargs)


def _register_open_clip_config(arch: str, config_path: str) -> None:
    import open_clip

    if not os.path.isfile(config_path):
        raise ValueError("open_clip config file not found: %s" % config_path)
    stem = os.path.splitext(os.path.basename(config_path))[0]
    if stem != arch:
        raise ValueError(
            "open_clip names a config after its file: %s registers %r, not %r" % (config_path, stem, arch)
        )
    with open(config_path) as f:
        config = json.load(f)
    if arch not in open_clip.list_models() or open_clip.get_model_config(arch) != config:
        open_clip.add_model_config(config_path)


def _check_pretrained_available(arch: str, pretrained: str) -> bool:
    """Fails fast when the weights can be neither read locally nor downloaded.

    Returns:
        whether the weights are a cached download (then load them with the
        hub in offline mode, so that nothing touches the network)
    """
    import open_clip

    if os.path.isfile(pretrained):
        return False
    if _looks_like_path(pretrained):
        raise ValueError("Checkpoint file not found: %s" % pretrained)

    tag_config = open_clip.get_pretrained_cfg(arch, pretrained)
    if not tag_config:
        raise ValueError(
            "Unknown pretrained tag %r for open_clip architecture %r. Known tags: %s. "
            "To use your own weights, pass model_kwargs={'pretrained': '/path/to/checkpoint.pt'}"
            % (pretrained, arch, open_clip.list_pretrained_tags_by_model(arch) or "none")
        )
    if _cached_pretrained_file(tag_config) is not None:
        return True
    reason = _download_blocker(tag_config)
    if reason is not None:
        raise ValueError(
            "Cannot load open_clip weights %r for %r: they are not in the local cache and %s. "
            "Download the checkpoint on a machine with internet access, copy it here and pass its path: "
            "model_kwargs={'pretrained': '/path/to/checkpoint.pt'} (or 'open_clip:%s@/path/to/checkpoint.pt')"
            % (pretrained, arch, reason, arch)
        )
    return False


def _hub_file(tag_config: Mapping[str, Any]) -> Optional[Tuple[str, List[str]]]:
    """The hub repo and file names open_clip would try for a tag (safetensors first), if it uses the hub."""
    import open_clip.pretrained as ocp

    if not tag_config.get("hf_hub") or not ocp.has_hf_hub():
        return None
    repo_id, filename = os.path.split(tag_config["hf_hub"])
    filename = filename or ocp.HF_WEIGHTS_NAME
    safe_alternatives = getattr(ocp, "_get_safe_alternatives", lambda name: [])  # private in open_clip 3.x
    return repo_id, list(safe_alternatives(filename)) + [filename]


def _cached_pretrained_file(tag_config: Mapping[str, Any]) -> Optional[str]:
    if tag_config.get("file"):
        return tag_config["file"] if os.path.isfile(tag_config["file"]) else None
    hub_file = _hub_file(tag_config)
    if hub_file is not None:
        from huggingface_hub import try_to_load_from_cache

        repo_id, filenames = hub_file
        for filename in filenames:
            cached = try_to_load_from_cache(repo_id, filename)
            if isinstance(cached, str):
                return cached
        return None
    if tag_config.get("url"):
        # open_clip.pretrained.download_pretrained_from_url's cache
        cached = os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(tag_config["url"]))
        return cached if os.path.isfile(cached) else None
    return None


def _download_blocker(tag_config: Mapping[str, Any]) -> Optional[str]:
    """Why a download cannot start (offline mode, host unreachable), or ``None``.

    One request with a short timeout and no retries: any HTTP answer, even an
    error status, means the network works and open_clip may try.
    """
    hub_file = _hub_file(tag_config)
    if hub_file is not None:
        import huggingface_hub
        from huggingface_hub.errors import HfHubHTTPError

        if _hf_offline_requested():
            return "HF_HUB_OFFLINE is set"
        repo_id, filenames = hub_file
        url = huggingface_hub.hf_hub_url(repo_id, filenames[-1])
        try:
            huggingface_hub.get_hf_file_metadata(url, timeout=DOWNLOAD_PROBE_TIMEOUT_S)
        except HfHubHTTPError:
            return None
        except Exception as error:  # connection, DNS, timeout, offline mode
            return "the Hugging Face hub is unreachable (%s: %s)" % (type(error).__name__, error)
        return None
    if tag_config.get("url"):
        request = urllib.request.Request(tag_config["url"], method="HEAD")
        try:
            urllib.request.urlopen(request, timeout=DOWNLOAD_PROBE_TIMEOUT_S).close()
        except urllib.error.HTTPError:
            return None
        except (urllib.error.URLError, OSError) as error:
            return "%s is unreachable (%s)" % (tag_config["url"], error)
        return None
    return "open_clip knows no download location for it"


def _hf_offline_requested() -> bool:
    truthy = ("1", "true", "yes", "on")
    if any(os.environ.get(name, "").lower() in truthy for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return True
    import huggingface_hub.constants

    return bool(huggingface_hub.constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def _hf_hub_offline(enabled: bool) -> Iterator[None]:
    """Puts huggingface_hub in offline mode while open_clip loads cached weights.

    open_clip calls ``hf_hub_download`` without ``local_files_only``, which
    revalidates the cached file online and, without network, retries for
    ~45 s before falling back to the cache. huggingface_hub reads
    ``HF_HUB_OFFLINE`` once at import, so the module constant is what counts.
    """
    if not enabled:
        yield
        return
    import huggingface_hub.constants as hf_constants

    previous = hf_constants.HF_HUB_OFFLINE
    hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hf_constants.HF_HUB_OFFLINE = previous


def _explain_open_clip_failure(arch: str, pretrained: str, error: BaseException) -> str:
    message = "%s: %s" % (type(error).__name__, str(error).strip())
    if "state_dict" in message or "size mismatch" in message:
        first_lines = "\n".join(message.splitlines()[:4])
        return (
            "Checkpoint %s does not match the open_clip architecture %r (wrong architecture name or config?). "
            "open_clip said: %s" % (pretrained, arch, first_lines)
        )
    if os.path.isfile(pretrained):
        return "Could not load checkpoint %s as open_clip architecture %r: %s" % (pretrained, arch, message)
    return (
        "Could not load open_clip weights %r for %r: %s. To use a local checkpoint, pass "
        "model_kwargs={'pretrained': '/path/to/checkpoint.pt'}" % (pretrained, arch, message)
    )


def _looks_like_path(value: Any) -> bool:
    """Tags are bare names; anything with a separator or checkpoint suffix is a path."""
    if not isinstance(value, str):
        return False
    return os.sep in value or "/" in value or value.startswith("~") or value.lower().endswith(_CHECKPOINT_SUFFIXES)


def _fiftyone_model(model: ModelLike) -> fom.Model:
    return model.model if isinstance(model, ResolvedModel) else model


def _model_device(model: fom.Model) -> torch.device:
    device = getattr(model, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def load_model(
    model: Union[str, fom.Model, ResolvedModel],
    model_kwargs: Optional[Mapping[str, Any]] = None,
    device: Union[str, torch.device, None] = None,
) -> fom.Model:
    """A FiftyOne model for ``compute_similarity(model=...)``, from a model
    instance, a zoo model name or ``"open_clip:<ARCH>"`` (see the module
    docstring).

    A model loaded from a name carries its spec: the Qdrant backend stores
    it with the run, so that any process (e.g. the App server) reloads the
    model to embed text prompts. Same as ``resolve_model(...).model``.
    """
    return resolve_model(model, model_kwargs, device=device).model


# -- streaming embeddings ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ImageTask:
    """One image for a loader worker to decode, and the boxes to crop from it.

    ``boxes is None`` means the whole image is one row; otherwise each
    relative ``[x, y, w, h]`` box is one row, identified by its label id.
    """

    sample_id: str
    filepath: str
    label_ids: Optional[Tuple[str, ...]] = None
    boxes: Optional[Tuple[Optional[Tuple[float, ...]], ...]] = None

    @property
    def num_rows(self) -> int:
        return 1 if self.boxes is None else len(self.boxes)

    def failures(self, error: BaseException, row: Optional[int] = None) -> List[EmbeddingFailure]:
        rows = range(self.num_rows) if row is None else [row]
        text = "%s: %s" % (type(error).__name__, error)
        return [
            EmbeddingFailure(self.sample_id, self.filepath, None if self.label_ids is None else self.label_ids[i], text)
            for i in rows
        ]


@dataclasses.dataclass
class _LoadedBatch:
    """What a loader worker hands back: model inputs and the ids of their rows."""

    inputs: Union[torch.Tensor, List[Any]]
    sample_ids: List[str]
    label_ids: Optional[List[str]]
    failures: List[EmbeddingFailure]

    def pin_memory(self) -> "_LoadedBatch":
        # Called by the DataLoader's pin-memory thread (CUDA only): page-locked
        # host memory makes the copy to the GPU asynchronous
        if isinstance(self.inputs, torch.Tensor):
            self.inputs = self.inputs.pin_memory()
        return self


class _ImageTaskDataset(torch.utils.data.Dataset):
    """Decodes, crops and preprocesses images in DataLoader workers.

    Indexed by :class:`_ImageTask` rather than by position, so that the
    main process can stream tasks from the database without holding the
    whole collection's ids and paths in memory.
    """

    def __init__(self, transform: Optional[Callable[[Image.Image], Any]]):
        self.transform = transform

    def __getitem__(self, task: _ImageTask) -> Tuple[_ImageTask, List[Tuple[int, Any]], List[EmbeddingFailure]]:
        try:
            with open(task.filepath, "rb") as f:
                image = Image.open(f).convert("RGB")
        except Exception as error:
            return task, [], task.failures(error)
        pixels = None if task.boxes is None else np.asarray(image)
        rows, failures = [], []
        for row in range(task.num_rows):
            try:
                crop = image if pixels is None else _crop(pixels, task.boxes[row])
                rows.append((row, self._prepare(crop)))
            except Exception as error:  # one bad box or transform fails its row only
                failures.extend(task.failures(error, row))
        return task, rows, failures

    def _prepare(self, image: Union[Image.Image, np.ndarray]) -> Any:
        if self.transform is None:
            return np.asarray(image)  # non-Torch model: it preprocesses itself
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        return self.transform(image)


def _split_task(task: _ImageTask, max_rows: int) -> Iterator[_ImageTask]:
    if task.num_rows <= max_rows:
        yield task
        return
    for start in range(0, task.num_rows, max_rows):
        end = start + max_rows
        yield dataclasses.replace(task, label_ids=task.label_ids[start:end], boxes=task.boxes[start:end])


def _crop(pixels: np.ndarray, box: Optional[Sequence[float]]) -> np.ndarray:
    """FiftyOne's own patch extraction, so crops match ``compute_patch_embeddings``."""
    if box is None:
        raise ValueError("label has no bounding box")
    crop = foup.extract_patch(pixels, fol.Detection(bounding_box=list(box)))
    if crop.size == 0:
        raise ValueError("empty crop for bounding box %s" % (list(box),))
    return crop


def _collate(loaded: List[Tuple[_ImageTask, List[Tuple[int, Any]], List[EmbeddingFailure]]]) -> _LoadedBatch:
    inputs, sample_ids, label_ids, failures = [], [], [], []
    for task, rows, task_failures in loaded:
        failures.extend(task_failures)
        for row, item in rows:
            inputs.append(item)
            sample_ids.append(task.sample_id)
            if task.label_ids is not None:
                label_ids.append(task.label_ids[row])
    has_labels = any(task.label_ids is not None for task, _, _ in loaded)
    if inputs and all(isinstance(x, torch.Tensor) and x.shape == inputs[0].shape for x in inputs):
        inputs = torch.stack(inputs)
    return _LoadedBatch(inputs, sample_ids, label_ids if has_labels else None, failures)


class _PendingEmbeddings:
    """Embeddings whose computation may still be running on the GPU.

    CUDA kernels and the copy to (pinned) host memory are queued
    asynchronously; :meth:`result` waits for this batch only, so the next
    batch's forward pass can be queued first and overlap the caller's work.
    """

    def __init__(self, host: Union[torch.Tensor, np.ndarray], done: Optional["torch.cuda.Event"] = None):
        self._host = host
        self._done = done

    def result(self) -> np.ndarray:
        if self._done is not None:
            self._done.synchronize()
        host = self._host.numpy() if isinstance(self._host, torch.Tensor) else self._host
        return np.asarray(host, dtype=np.float32).reshape(len(host), -1)


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """Sets torch's intra-op thread count for one forward pass (it is cheap),
    leaving the caller's setting in place between batches."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _workers_pay_off(decode_s: float, forward_s: float, workers: int, all_threads: int, threads_beside: int) -> bool:
    """Whether ``workers`` decoding in parallel beat decoding in this process.

    With workers, a batch costs the slower of decoding spread over them and
    the forward pass on the threads left beside them; without, decoding then
    the forward pass on all threads (``forward_s`` was timed on those).
    """
    with_workers = max(decode_s / workers, forward_s * all_threads / threads_beside)
    return with_workers < decode_s + forward_s


def _cpu_threads_beside_workers(num_workers: int) -> int:
    """Model threads that, with the decoding workers, do not exceed the CPUs.

    Oversubscribed OpenMP threads wait on each other at every operator: on 2
    cores, a tiny model ran 60x slower with 2 threads beside one busy worker.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(torch.get_num_threads(), cpus - num_workers))


class _BatchEmbedder:
    """Runs a FiftyOne model on preprocessed batches, fast on the model's device.

    open_clip models go straight to ``encode_image``: FiftyOne's wrapper
    would also compute zero-shot logits (and require classes) on every batch.
    Other Torch models use ``embed_all`` with preprocessing turned off, since
    the loader workers already applied ``model.transforms``.
    """

    def __init__(self, model: fom.Model, half_precision: Optional[bool], cpu_threads: Optional[int] = None):
        self.model = model
        self.is_torch = isinstance(model, fom.TorchModelMixin)
        self.device = _model_device(model)
        self.cpu_threads = cpu_threads if self.device.type == "cpu" else None
        # float16 on CUDA by default; bfloat16 on CPU only on request (it is
        # faster on CPUs with AVX512-BF16/AMX, and changes embeddings slightly)
        if self.device.type == "cuda" and half_precision is not False:
            self.autocast_dtype: Optional[torch.dtype] = torch.float16
        elif self.device.type == "cpu" and half_precision:
            self.autocast_dtype = torch.bfloat16
        else:
            self.autocast_dtype = None
        if isinstance(model, fouoc.TorchOpenClipModel):
            # FiftyOne keeps open_clip's module and transform private; using
            # them skips the zero-shot head and keeps workers picklable
            self.open_clip_module = model._model
            self.transform = model._clip_preprocess
        else:
            self.open_clip_module = None
            self.transform = model.transforms if self.is_torch else None
            if not (isinstance(model, fom.EmbeddingsMixin) and model.has_embeddings):
                raise ValueError("Model %s does not expose embeddings" % type(model).__name__)

    def start(self, inputs: Union[torch.Tensor, List[Any]]) -> _PendingEmbeddings:
        if isinstance(inputs, list) and self.is_torch:
            # ragged transforms (differently sized tensors) cannot be stacked
            return _PendingEmbeddings(np.concatenate([self.start(item.unsqueeze(0)).result() for item in inputs]))
        with contextlib.ExitStack() as context:
            context.enter_context(torch.inference_mode())
            if self.cpu_threads is not None:
                context.enter_context(_torch_threads(self.cpu_threads))
            if self.autocast_dtype is not None:
                context.enter_context(torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype))
            if isinstance(inputs, torch.Tensor):
                inputs = inputs.to(self.device, non_blocking=True)
            if self.open_clip_module is None:
                if self.is_torch:
                    context.enter_context(fou.SetAttributes(self.model, preprocess=False))
                return _PendingEmbeddings(self.model.embed_all(inputs))
            embeddings = self.open_clip_module.encode_image(inputs).float()
        if embeddings.device.type != "cuda":
            return _PendingEmbeddings(embeddings)
        host = torch.empty(embeddings.shape, dtype=embeddings.dtype, pin_memory=True)
        host.copy_(embeddings, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return _PendingEmbeddings(host, done)


class EmbeddingBatchIterator(Iterator[EmbeddingBatch]):
    """Iterator returned by :func:`iter_embedding_batches`.

    Attributes:
        failures: :class:`EmbeddingFailure` of every image or patch that could
            not be read or embedded so far; complete once iteration ends
        num_embedded: rows yielded so far
        num_skipped: rows skipped because their id was in ``skip_ids``
        total: rows in the collection (embedded + skipped + failed at the end)
    """

    def __init__(
        self,
        samples,
        model: ModelLike,
        patches_field: Optional[str],
        batch_size: Optional[int],
        num_workers: Optional[int],
        skip_ids: Optional[Iterable[str]],
        progress: Union[bool, Callable, None],
        failures: Optional[List[EmbeddingFailure]],
        half_precision: Optional[bool],
        skip_failures: bool,
    ):
        fov.validate_image_collection(samples)
        self.model = _fiftyone_model(model)
        if getattr(self.model, "media_type", "image") != "image":
            raise ValueError("Only image models can embed images; got media_type=%r" % self.model.media_type)
        self.num_workers = fout.recommend_num_workers(num_workers)
        self._embedder = _BatchEmbedder(self.model, half_precision, _cpu_threads_beside_workers(self.num_workers))
        # on CPU, workers help only where decoding, not the model, is the
        # bottleneck: unless told, the first batch decides (see _probe_workers)
        self._probe_first_batch = num_workers is None and self.num_workers > 0 and self._embedder.device.type == "cpu"
        self.samples = samples
        self.patches_field = patches_field
        self.patch_label_type = _patch_label_type(samples, patches_field) if patches_field else None
        self.batch_size = batch_size or (
            DEFAULT_CUDA_BATCH_SIZE if self._embedder.device.type == "cuda" else DEFAULT_CPU_BATCH_SIZE
        )
        if self.batch_size < 1:
            raise ValueError("batch_size must be positive, got %r" % batch_size)
        self.skip_ids: Set[str] = set(skip_ids or ())
        self.progress = progress
        self.failures: List[EmbeddingFailure] = failures if failures is not None else []
        self.skip_failures = skip_failures
        self.num_embedded = 0
        self.num_skipped = 0
        self.total = count_rows(samples, patches_field)
        self._batches = self._generate()

    def __next__(self) -> EmbeddingBatch:
        return next(self._batches)

    def __iter__(self) -> "EmbeddingBatchIterator":
        return self

    def close(self) -> None:
        """Stops early and shuts down the loader workers."""
        self._batches.close()

    def failure_summary(self, max_listed: int = 20) -> str:
        """One message listing the failures, for a single warning at the end."""
        return format_failures(self.failures, max_listed)

    def _generate(self) -> Iterator[EmbeddingBatch]:
        use_cuda = self._embedder.device.type == "cuda"
        dataset = _ImageTaskDataset(self._embedder.transform)
        plan = self._plan_batches()
        probed: Optional[Tuple[_LoadedBatch, Optional[_PendingEmbeddings]]] = None
        if self._probe_first_batch:
            first_tasks = next(plan, None)
            if first_tasks is not None:
                probed = self._probe_workers(dataset, first_tasks)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=plan,
            num_workers=self.num_workers,
            collate_fn=_collate,
            pin_memory=use_cuda,
            # several batches in flight per worker keep the GPU fed while
            # workers decode; the CPU path is compute-bound anyway
            prefetch_factor=(4 if use_cuda else 2) if self.num_workers > 0 else None,
        )
        iters_str = "patches" if self.patches_field else "images"
        with fou.ProgressBar(total=self.total, progress=self.progress, iters_str=iters_str) as progress_bar:
            counted_skips = 0
            pending: Optional[Tuple[_PendingEmbeddings, _LoadedBatch]] = None
            batches = loader if probed is None else itertools.chain([probed[0]], loader)
            for loaded in batches:
                self.failures.extend(loaded.failures)
                if loaded.failures and not self.skip_failures:
                    raise RuntimeError(format_failures(loaded.failures))
                # skips are counted ahead of embedding, as the loader prefetches tasks
                progress_bar.update(len(loaded.failures) + self.num_skipped - counted_skips)
                counted_skips = self.num_skipped
                # queue this batch before handing out the previous one, so that
                # the GPU computes while the caller stores the previous batch
                if probed is not None and loaded is probed[0]:
                    started = (probed[1], loaded) if probed[1] is not None else None
                else:
                    started = (self._embedder.start(loaded.inputs), loaded) if loaded.sample_ids else None
                if pending is not None:
                    yield self._complete(*pending, progress_bar)
                pending = started
            if pending is not None:
                yield self._complete(*pending, progress_bar)
            progress_bar.update(self.num_skipped - counted_skips)

    def _probe_workers(
        self, dataset: "_ImageTaskDataset", tasks: List["_ImageTask"]
    ) -> Tuple["_LoadedBatch", Optional["_PendingEmbeddings"]]:
        """Decodes and embeds the first batch in this process, on every
        core, and keeps the loader workers only if that is faster per image.

        Workers take cores from the model: on 2 cores, ViT-B-32 beside one
        worker embedded 11 images/s, alone on both cores 22 (decoding is
        ~5% of its time); a tiny model is the opposite case.
        """
        started = time.perf_counter()
        loaded = _collate([dataset[task] for task in tasks])
        decode_s = time.perf_counter() - started
        if not loaded.sample_ids:  # nothing readable to time: keep the default
            return loaded, None
        all_threads = self._embedder.cpu_threads = _cpu_threads_beside_workers(0)
        started = time.perf_counter()
        pending = self._embedder.start(loaded.inputs)  # computed right away on CPU
        forward_s = time.perf_counter() - started
        if not _workers_pay_off(decode_s, forward_s, self.num_workers, all_threads,
                                _cpu_threads_beside_workers(self.num_workers)):
            self.num_workers = 0
        self._embedder.cpu_threads = _cpu_threads_beside_workers(self.num_workers)
        logger.debug(
            "First batch: decode %.3f s, forward %.3f s on %d threads: %d loader worker(s), %d model thread(s)",
            decode_s, forward_s, all_threads, self.num_workers, self._embedder.cpu_threads,
        )
        return loaded, pending

    def _complete(self, embeddings: _PendingEmbeddings, loaded: _LoadedBatch, progress_bar) -> EmbeddingBatch:
        batch = EmbeddingBatch(embeddings.result(), loaded.sample_ids, loaded.label_ids)
        self.num_embedded += len(batch)
        progress_bar.update(len(batch))
        return batch

    def _plan_batches(self) -> Iterator[List[_ImageTask]]:
        """Groups tasks into batches of at most ``batch_size`` rows.

        An image with more patches than ``batch_size`` is split into several
        tasks (it is decoded once per task), so batches never exceed it.
        """
        batch: List[_ImageTask] = []
        rows = 0
        for task in self._iter_tasks():
            for part in _split_task(task, self.batch_size):
                if rows + part.num_rows > self.batch_size:
                    yield batch
                    batch, rows = [], 0
                batch.append(part)
                rows += part.num_rows
        if batch:
            yield batch

    def _iter_tasks(self) -> Iterator[_ImageTask]:
        """Streams tasks from the database, leaving out ``skip_ids``."""
        if self.patches_field is None:
            for sample in self.samples.select_fields().iter_samples():
                if sample.id in self.skip_ids:
                    self.num_skipped += 1
                    continue
                yield _ImageTask(sample.id, sample.filepath)
            return

        for sample in self.samples.select_fields(self.patches_field).iter_samples():
            all_patches = _patch_boxes(sample[self.patches_field])
            patches = [(label_id, box) for label_id, box in all_patches if label_id not in self.skip_ids]
            if patches:
                label_ids, boxes = zip(*patches)
                yield _ImageTask(sample.id, sample.filepath, tuple(label_ids), tuple(boxes))
            self.num_skipped += len(all_patches) - len(patches)


def iter_embedding_batches(
    samples,
    model: ModelLike,
    patches_field: Optional[str] = None,
    batch_size: Optional[int] = None,
    num_workers: Optional[int] = None,
    skip_ids: Optional[Iterable[str]] = None,
    progress: Union[bool, Callable, None] = None,
    failures: Optional[List[EmbeddingFailure]] = None,
    half_precision: Optional[bool] = None,
    skip_failures: bool = True,
) -> EmbeddingBatchIterator:
    """Embeds a collection's images (or patches) batch by batch, with flat memory.

    Images are decoded, cropped and preprocessed in DataLoader workers while
    the model embeds the previous batch; each :class:`EmbeddingBatch` is
    yielded as soon as it is ready, so memory does not grow with the dataset.
    Unreadable or missing images are skipped and recorded in the iterator's
    ``failures`` (and in ``failures`` if a list is passed), so the caller can
    log one warning at the end (see :func:`format_failures`).

    Args:
        samples: an image :class:`fiftyone.core.collections.SampleCollection`
        model: a :class:`ResolvedModel` or FiftyOne model exposing embeddings
        patches_field: embed the patches in this ``Detection(s)``,
            ``Polyline(s)`` or ``Keypoint(s)`` field instead of whole images
        batch_size: rows per batch (default 32 on CPU, 128 on CUDA)
        num_workers: loader worker processes; 0 loads in this process. On
            CPU the model runs with at most ``CPUs - num_workers`` threads,
            so that the two do not oversubscribe the cores. Default: FiftyOne's
            recommendation (half the CPUs), except on CPU where the first
            batch, timed here, drops the workers if decoding is cheap next to
            the model (ViT-B-32 on 2 cores: 11 -> 22 images/s)
        skip_ids: sample ids (or label ids, with ``patches_field``) not to
            embed again, e.g. those already indexed before an interruption
        progress: FiftyOne's ``progress`` argument (bool, callback or None)
        failures: optional list to which failures are appended
        half_precision: autocast to float16 on CUDA (default on) or to
            bfloat16 on CPU (default off: faster on CPUs with AVX512-BF16 or
            AMX, embeddings differ from float32 by ~1e-4 in cosine)
        skip_failures: whether to go on past unreadable images (default);
            if False, the first one raises a ``RuntimeError``

    Returns:
        an :class:`EmbeddingBatchIterator` of :class:`EmbeddingBatch`
    """
    return EmbeddingBatchIterator(
        samples, model, patches_field=patches_field, batch_size=batch_size, num_workers=num_workers,
        skip_ids=skip_ids, progress=progress, failures=failures, half_precision=half_precision,
        skip_failures=skip_failures,
    )


_LIST_ATTRIBUTES = {fol.Detections: "detections", fol.Polylines: "polylines", fol.Keypoints: "keypoints"}
_PATCH_LABEL_TYPES = (fol.Detection, fol.Detections, fol.Polyline, fol.Polylines, fol.Keypoint, fol.Keypoints)


def _patch_label_type(samples, patches_field: str) -> type:
    field = samples.get_field(patches_field)
    label_type = getattr(field, "document_type", None)
    if field is None or label_type not in _PATCH_LABEL_TYPES:
        raise ValueError(
            "patches_field %r must be a Detection(s), Polyline(s) or Keypoint(s) field; found %s"
            % (patches_field, label_type.__name__ if label_type else field)
        )
    return label_type


def _labels_of(label) -> List[fol.Label]:
    if label is None:
        return []
    list_attribute = _LIST_ATTRIBUTES.get(type(label))
    return list(getattr(label, list_attribute) or []) if list_attribute else [label]


def _patch_boxes(label) -> List[Tuple[str, Optional[Tuple[float, ...]]]]:
    """``(label id, relative [x, y, w, h])`` of each patch.

    Not ``fiftyone.utils.patches.parse_patches``: it converts polylines to
    new detections, losing the label ids that index entries are keyed by.
    """
    boxes = []
    for patch in _labels_of(label):
        if isinstance(patch, fol.Detection):
            box = patch.bounding_box
        elif isinstance(patch, fol.Polyline):
            box = patch.to_detection().bounding_box
        else:
            box = _keypoint_box(patch)
        boxes.append((patch.id, tuple(box) if box else None))
    return boxes


def _keypoint_box(keypoint: fol.Keypoint) -> Optional[List[float]]:
    points = np.asarray([p for p in keypoint.points or [] if p is not None and not np.isnan(p).any()], dtype=float)
    if points.size == 0:
        return None
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]
