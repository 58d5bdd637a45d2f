"""SpecWatch: the serving side's throttled look-up of ``<kind>/latest``."""

from __future__ import annotations

from pathlib import Path

from shopsearch.retrieval.model_registry import CARD_FILE, SpecWatch


def _version(models_dir: Path, kind: str, version: str) -> Path:
    path = models_dir / kind / version
    path.mkdir(parents=True)
    (path / CARD_FILE).write_text("{}")
    return path


def test_a_new_version_is_seen_at_the_next_look_not_before(tmp_path: Path) -> None:
    first = _version(tmp_path, "personal", "20261201T000000Z")
    slow = SpecWatch("personal/latest", tmp_path, interval_s=3600)
    eager = SpecWatch("personal/latest", tmp_path, interval_s=0)
    assert slow.current() == first and eager.current() == first
    second = _version(tmp_path, "personal", "20261202T000000Z")
    assert slow.current() == first  # answered from memory within the interval
    assert eager.current() == second


def test_an_unresolvable_spec_is_none_with_the_registry_message(tmp_path: Path) -> None:
    watch = SpecWatch("recommender/latest", tmp_path, interval_s=0)
    assert watch.current() is None
    assert watch.error is not None and "train recommender" in watch.error
    made = _version(tmp_path, "recommender", "20261201T000000Z")
    assert watch.current() == made and watch.error is None
