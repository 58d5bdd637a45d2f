"""The guard of the read-only session fixtures (tests/conftest.py) sees what it must:
a rebound encoder attribute, a patched method of a service's snapshot, a file written
into a fixture directory; and the copies it points to are free to change."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.api.service import SearchService
from shopsearch.retrieval.encoders import Encoder, ModelInfo

# Pure helpers: pytest loads conftest.py as `conftest`, so this import is a second copy.
from tests.conftest import dir_state, service_state


def test_the_session_encoder_refuses_changes_and_its_copy_takes_them(
    encoder: Encoder, own_encoder: Encoder
) -> None:
    with pytest.raises(AttributeError, match="`encoder` is read-only: cannot change 'info'"):
        encoder.info = ModelInfo(id="x", path="/x", sha256="0" * 64)
    with pytest.raises(AttributeError, match="read-only"):
        del encoder.device
    own_encoder.info = ModelInfo(id="x", path="/x", sha256="0" * 64)
    assert encoder.info.id != "x" and own_encoder.model is encoder.model


def test_service_state_sees_a_patched_leg(
    own_sample_service: SearchService, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = service_state(own_sample_service)
    monkeypatch.setattr(own_sample_service.snapshot.lexical, "search", lambda *a, **k: [])
    assert service_state(own_sample_service) != before
    monkeypatch.undo()
    assert service_state(own_sample_service) == before


def test_dir_state_sees_a_file_written_or_added(tmp_path: Path) -> None:
    (tmp_path / "CURRENT").write_text("v1")
    before = dir_state(tmp_path)
    assert dir_state(tmp_path) == before
    (tmp_path / "CURRENT").write_text("v22")
    assert dir_state(tmp_path) != before
    again = dir_state(tmp_path)
    (tmp_path / ".switch.lock").touch()
    assert set(dir_state(tmp_path)) - set(again) == {".switch.lock"}


def test_sample_index_copy_is_a_copy(sample_index: Path, sample_index_copy: Path) -> None:
    assert sample_index_copy != sample_index
    assert set(dir_state(sample_index_copy)) == set(dir_state(sample_index))
