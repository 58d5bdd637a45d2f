"""Loading a model is offline by its arguments alone: it never changes the process
environment (a variable set there would leak into every later library call and child
process of the server, trainer or tests)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shopsearch.rerank.cross_encoder import Reranker, RerankerError
from shopsearch.retrieval.encoders import Encoder, ModelError

#: Variables that switch the Hugging Face libraries offline; unset here so that a
#: constructor setting one shows.
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def _environment() -> dict[str, str]:
    """``os.environ`` less the variable pytest itself rewrites between phases."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


@pytest.fixture
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment before loading, with the offline variables unset. torch sets a
    few variables of its own when first imported (KMP_*, TORCHINDUCTOR_CACHE_DIR): that
    import happens here, so only what loading a model does is compared."""
    import sentence_transformers

    del sentence_transformers
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return _environment()


def test_loading_the_default_encoder_leaves_the_environment_alone(
    clean_environment: dict[str, str],
) -> None:
    encoder = Encoder(device="cpu")
    assert encoder.dim == 384
    assert _environment() == clean_environment


def test_loading_a_reranker_leaves_the_environment_alone(
    clean_environment: dict[str, str], cross_encoder_dir: Path
) -> None:
    reranker = Reranker(cross_encoder_dir, device="cpu", backend="torch")
    assert reranker.score("drill", ["cordless drill"]).shape == (1,)
    assert _environment() == clean_environment


def test_a_directory_that_is_not_a_model_fails_without_the_hub(
    clean_environment: dict[str, str], tmp_path: Path
) -> None:
    """local_files_only: a directory with weights but no config is refused at once (no
    download attempt), with the path in the message."""
    (tmp_path / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ModelError, match=str(tmp_path)):
        Encoder(tmp_path, device="cpu")
    with pytest.raises(RerankerError, match=str(tmp_path)):
        Reranker(tmp_path, device="cpu", backend="torch")
    assert _environment() == clean_environment
