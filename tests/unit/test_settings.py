"""Config checks that run before anything connects: Qdrant's partial
configs, connection settings from strings, and the config class itself
(constructing one needs no MongoDB and no Qdrant)."""

import math

import numpy as np
import pytest

from fiftyone_qdrant import settings
from fiftyone_qdrant.errors import ConfigError
from fiftyone_qdrant.similarity import QdrantSimilarityConfig


@pytest.mark.parametrize("name, value, message", [
    ("hnsw_config", {"m": -1}, r"`hnsw_config.m` must be an integer from 0"),
    ("hnsw_config", {"m": 1.5}, r"`hnsw_config.m` must be an integer"),
    ("hnsw_config", {"on_disk": "yes"}, r"`hnsw_config.on_disk` must be True or False"),
    ("hnsw_config", {"M": 16}, r"Unknown key\(s\) \['M'\] in `hnsw_config`"),
    ("search_params", {"quantization": {"oversampling": 0.5}}, r"oversampling` must be a number at least 1"),
    ("optimizers_config", {"deleted_threshold": math.nan}, r"must be a number from 0 to 1"),
    ("optimizers_config", {"max_optimization_threads": "many"}, r"or 'auto'"),
    ("wal_config", [1], r"`wal_config` must be a dict"),
])
def test_partial_configs_are_checked_with_qdrants_own_limits(name, value, message):
    with pytest.raises(ConfigError, match=message):
        settings.validate_partial(name, value, None)


def test_valid_partial_configs_come_back_as_plain_python():
    checked = settings.validate_partial(
        "search_params", {"hnsw_ef": np.int64(64), "exact": np.bool_(False), "indexed_only": None}, None
    )
    assert checked == {"hnsw_ef": 64, "exact": False}
    assert type(checked["hnsw_ef"]) is int and type(checked["exact"]) is bool
    assert settings.validate_partial("optimizers_config", {"max_optimization_threads": "auto"}, None) == {
        "max_optimization_threads": "auto"}


@pytest.mark.parametrize("value, message", [
    ({}, "exactly one of"),
    ({"scalar": {}, "binary": {}}, "exactly one of"),
    ({"scalar": {}}, "`scalar` needs 'type'"),
    ({"product": {"compression": "x3"}}, r"must be one of \['x4'"),
    ({"turbo": {}}, r"Unknown key\(s\) \['turbo'\]"),
])
def test_quantization_needs_exactly_one_complete_kind(value, message):
    with pytest.raises(ConfigError, match=message):
        settings.validate_quantization(value)


@pytest.mark.parametrize("text, expected", [("true", True), ("No", False), (" on ", True), ("0", False), (1, True)])
def test_flags_from_files_and_the_environment(text, expected):
    assert settings.parse_flag("prefer_grpc", text) is expected


def test_a_bad_flag_says_what_it_must_be():
    with pytest.raises(ConfigError, match="`https` must be True or False, got 'maybe'"):
        settings.parse_flag("https", "maybe")


def test_an_api_key_of_digits_stays_the_string_it_was(monkeypatch):
    monkeypatch.setenv("FIFTYONE_BRAIN_SIMILARITY_QDRANT_API_KEY", "0012345")
    assert settings.string_setting("api_key", 12345) == "0012345"  # FiftyOne's env parsing made it an int
    assert settings.string_setting("api_key", 99) == "99"
    assert settings.port_setting(" 6334 ") == 6334


def test_the_config_keeps_credentials_out_of_its_serialization():
    config = QdrantSimilarityConfig(url="http://user:pw@qdrant.example:6333", api_key="secret-key",
                                    quantization_config={"scalar": {"type": "int8"}}, on_disk=True)
    serialized = str(config.serialize())
    assert "secret-key" not in serialized and "pw" not in serialized and "qdrant.example" not in serialized
    assert "pw" not in repr(config) and "***" in repr(config)
    assert config.collection_spec(8).quantization_config == {"scalar": {"type": "int8"}}


@pytest.mark.parametrize("kwargs, message", [
    ({"metric": "hamming"}, "Unsupported metric 'hamming'"),
    ({"collection_name": "../escape"}, "Invalid collection name"),
    ({"replication_factor": 0}, "`replication_factor` must be a positive integer"),
    ({"on_disk": "yes"}, "`on_disk` must be True or False"),
    ({"url": "http://x", "grpc_port": 70000}, "`grpc_port` must be an integer port number"),
    ({"url": "http://x", "timeout": -1}, "`timeout` must be a positive number"),
])
def test_bad_config_arguments_say_what_to_fix(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        QdrantSimilarityConfig(**kwargs)
