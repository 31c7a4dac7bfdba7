"""Checks of the config's settings, before anything connects or is written.

Qdrant's partial configs are checked against Qdrant's own types and limits
(qdrant-client's models coerce or accept what the engine later rejects, far
from the cause); connection settings given as strings (a config file, the
environment) are parsed as FiftyOne's Qdrant integration documents.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Any, Dict, Optional

import numpy as np

from .brain_internals import parse_env_value
from .errors import ConfigError

_U64_MAX = 2**64 - 1  # Qdrant's u64/usize settings


# What Qdrant itself accepts in each partial config (its Rust types and
# `validate` ranges, lib/collection/src/operations/config_diff.rs and
# lib/segment/src/types.rs): ("int", min) is an unsigned integer of at
# least min, ("float", min, max) a finite number in [min, max], "bool" a
# real bool, a dict a nested config. qdrant-client's models coerce ("yes"
# becomes True) or accept anything (-1 for a usize); every query or
# creation would then fail in the engine, far from the cause.
_PARTIAL_SCHEMAS: Dict[str, Dict[str, Any]] = {
    "search_params": {
        "hnsw_ef": ("int", 0),
        "exact": "bool",
        "indexed_only": "bool",
        "quantization": {"ignore": "bool", "rescore": "bool", "oversampling": ("float", 1.0, math.inf)},
        "acorn": {"enable": "bool", "max_selectivity": ("float", 0.0, 1.0)},
    },
    "hnsw_config": {
        "m": ("int", 0),
        "ef_construct": ("int", 4),
        "full_scan_threshold": ("int", 10),
        "max_indexing_threads": ("int", 0),
        "on_disk": "bool",
        "payload_m": ("int", 0),
        "inline_storage": "bool",
    },
    "optimizers_config": {
        "deleted_threshold": ("float", 0.0, 1.0),
        "vacuum_min_vector_number": ("int", 100),
        "default_segment_number": ("int", 0),
        "max_segment_size": ("int", 1),
        "memmap_threshold": ("int", 0),
        "indexing_threshold": ("int", 0),
        "flush_interval_sec": ("int", 0),
        "max_optimization_threads": ("int_or_auto", 0),
        "prevent_unoptimized": "bool",
    },
    # Qdrant's QuantizationConfig: exactly one of these (see _validate_quantization)
    "quantization_config": {
        "scalar": {"type": ("enum", ("int8",)), "quantile": ("float", 0.5, 1.0), "always_ram": "bool"},
        "product": {"compression": ("enum", ("x4", "x8", "x16", "x32", "x64")), "always_ram": "bool"},
        "binary": {"always_ram": "bool", "encoding": ("enum", ("one_bit", "two_bits", "one_and_half_bits"))},
    },
    "wal_config": {
        "wal_capacity_mb": ("int", 1),
        "wal_segments_ahead": ("int", 0),
        "wal_retain_closed": ("int", 0),
    },
}


def is_int(value: Any) -> bool:


    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_setting(where: str, rule: Any, value: Any) -> Any:
    """``value`` checked against ``rule`` (see _PARTIAL_SCHEMAS), as the
    plain Python type Qdrant takes."""
    if isinstance(rule, dict):
        return _check_partial(where, rule, value)
    if rule == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ConfigError("`%s` must be True or False, got %r" % (where, value))
        return bool(value)
    kind, minimum = rule[0], rule[1]
    if kind == "enum":
        if value not in minimum:
            raise ConfigError("`%s` must be one of %s, got %r" % (where, list(minimum), value))
        return value
    if kind == "int_or_auto" and value == "auto":
        return value
    if kind in ("int", "int_or_auto"):
        if not is_int(value) or not minimum <= value <= _U64_MAX:
            raise ConfigError(
                "`%s` must be an integer from %d to %d%s, got %r"
                % (where, minimum, _U64_MAX, " or 'auto'" if kind == "int_or_auto" else "", value)
            )
        return int(value)
    maximum = rule[2]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) or not (
        math.isfinite(float(value)) and minimum <= float(value) <= maximum
    ):
        bound = "at least %g" % minimum if maximum == math.inf else "from %g to %g" % (minimum, maximum)
        raise ConfigError("`%s` must be a number %s, got %r" % (where, bound, value))
    return float(value)


def _check_partial(where: str, schema: Dict[str, Any], value: Any) -> Dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError("`%s` must be a dict, got %r" % (where, value))
    unknown = sorted(set(value) - set(schema), key=str)
    if unknown:
        raise ConfigError("Unknown key(s) %s in `%s`. Valid keys are %s" % (unknown, where, list(schema)))
    return {k: check_setting("%s.%s" % (where, k), schema[k], v) for k, v in value.items() if v is not None}


def validate_partial(name: str, value: Any, model_name: str) -> Optional[Dict[str, Any]]:
    """A partial Qdrant config dict, checked with Qdrant's own types and
    limits, then against qdrant-client's model ``model_name``."""
    if value is None:
        return None
    try:
        checked = _check_partial(name, _PARTIAL_SCHEMAS[name], value)
    except ConfigError as e:
        if str(e).startswith("Unknown key"):
            raise
        raise ConfigError("Invalid `%s`: %s" % (name, e)) from None
    if model_name is None:
        return checked
    # imported only when needed: importing qdrant_client takes ~2 s
    from qdrant_client import models as qm

    try:
        getattr(qm, model_name)(**checked)
    except Exception as e:
        raise ConfigError("Invalid `%s` %r: %s" % (name, value, e)) from None
    return checked


def validate_quantization(value: Any) -> Optional[Dict[str, Any]]:
    """Qdrant's ``quantization_config``: ``{"scalar": {"type": "int8", ...}}``,
    ``{"product": {"compression": "x16", ...}}`` or ``{"binary": {...}}``."""
    if value is None:
        return None
    checked = validate_partial("quantization_config", value, None)
    if len(checked) != 1:
        raise ConfigError(
            "Invalid `quantization_config`: give exactly one of 'scalar', 'product' or 'binary', got %r" % (value,)
        )
    (kind, settings), = checked.items()
    required = {"scalar": "type", "product": "compression"}.get(kind)
    if required and required not in settings:
        raise ConfigError("Invalid `quantization_config`: `%s` needs '%s', e.g. %r" % (
            kind, required, {"scalar": {"type": "int8"}, "product": {"compression": "x16"}}[kind]))
    from .server import quantization_model  # loads qdrant-client: only when one is given

    try:
        quantization_model(checked)
    except Exception as e:
        raise ConfigError("Invalid `quantization_config` %r: %s" % (value, e)) from None
    return checked


_TRUE_STRINGS = ("true", "yes", "on", "1")
_FALSE_STRINGS = ("false", "no", "off", "0")


def parse_flag(name: str, value: Any) -> Optional[bool]:
    """A bool setting given as a bool, or as a string from a config file or
    the environment ("true"/"false", "yes"/"no", "on"/"off", "1"/"0")."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE_STRINGS + _FALSE_STRINGS:
        return value.strip().lower() in _TRUE_STRINGS
    if is_int(value) and value in (0, 1):
        return bool(value)
    raise ConfigError("`%s` must be True or False, got %r" % (name, value))


_ENV_PREFIX = "FIFTYONE_BRAIN_SIMILARITY_QDRANT_"


def _raw_env_setting(name: str, value: Any) -> Any:
    """``value``, or the raw string of the ``FIFTYONE_BRAIN_SIMILARITY_QDRANT_
    <NAME>`` variable it was parsed from: FiftyOne's env parsing turns an
    API key ``0012345`` into the int 12345 and ``ab,cd`` into a list."""
    if value is None or isinstance(value, str):
        return value
    raw = os.environ.get(_ENV_PREFIX + name.upper())
    if raw is None:
        return value
    return raw if parse_env_value(raw) == value else value


def string_setting(name: str, value: Any) -> Optional[str]:
    value = _raw_env_setting(name, value)
    if value is None or isinstance(value, str):
        return value
    if is_int(value):  # e.g. an API key given as a number
        return str(value)
    raise ConfigError("`%s` must be a string, got %r" % (name, value))


def port_setting(value: Any) -> Any:
    """A gRPC port given as a string of digits (config file, environment)
    becomes an int; anything else is checked by ConnectionSettings."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def positive_int(name: str, value: Any) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError("`%s` must be a positive integer, got %r" % (name, value))
    return value


def strict_bool(name: str, value: Any) -> Optional[bool]:
    if value is None:
        return None
    return check_setting(name, "bool", value)
