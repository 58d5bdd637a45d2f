"""Reranker compression: layer pruning of a real cross-encoder and teacher-mixed labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shopsearch.indexer.training.compress import distilled_labels, kept_layers, prune_layers
from shopsearch.rerank.cross_encoder import Reranker


def test_kept_layers_are_evenly_spaced_and_keep_the_last() -> None:
    assert kept_layers(6, 2) == [2, 5]
    assert kept_layers(6, 3) == [1, 3, 5]
    assert kept_layers(6, 6) == [0, 1, 2, 3, 4, 5]
    assert kept_layers(6, 1) == [5]
    with pytest.raises(ValueError, match=r"keep must be in 1\.\.6"):
        kept_layers(6, 7)
    with pytest.raises(ValueError, match=r"keep must be in 1\.\.6"):
        kept_layers(6, 0)


def test_a_pruned_cross_encoder_saves_and_loads_with_fewer_layers(
    cross_encoder_dir: Path, tmp_path: Path
) -> None:
    import torch
    from sentence_transformers import CrossEncoder

    full = CrossEncoder(str(cross_encoder_dir), num_labels=1, device="cpu", local_files_only=True)
    layer = full.model.base_model.encoder.layer
    before = [layer[i].output.dense.weight.detach().clone() for i in (2, 5)]
    assert prune_layers(full, 2) == [2, 5]
    out = tmp_path / "pruned"
    full.save(str(out))
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    small = CrossEncoder(str(out), num_labels=1, device="cpu", local_files_only=True)
    kept = small.model.base_model.encoder.layer
    assert len(kept) == 2
    for got, want in zip(kept, before, strict=True):  # the teacher's weights, not fresh ones
        assert torch.equal(got.output.dense.weight, want)
    scores = Reranker(out, device="cpu", backend="torch").score("drill", ["cordless drill", "rug"])
    assert scores.shape == (2,) and np.isfinite(scores).all()


def test_distilled_labels_mix_the_teacher_scores(cross_encoder_dir: Path) -> None:
    teacher = Reranker(cross_encoder_dir, device="cpu", backend="torch")
    pairs = [
        ("cordless drill", "DeWalt 20V cordless drill", 1.0),
        ("cordless drill", "Area rug 5x8", 0.0),
        ("garden hose", "Flexzilla garden hose 50 ft", 0.5),
    ]
    mixed, stats = distilled_labels(teacher, pairs, 0.25)
    scores = [
        *teacher.score("cordless drill", [pairs[0][1], pairs[1][1]]).tolist(),
        *teacher.score("garden hose", [pairs[2][1]]).tolist(),
    ]
    for (q, t, label), (mq, mt, m), s in zip(pairs, mixed, scores, strict=True):
        assert (mq, mt) == (q, t)
        assert m == pytest.approx(0.75 * label + 0.25 * s, abs=1e-6)
    assert stats["teacher_weight"] == 0.25
    assert distilled_labels(teacher, pairs, 0.0)[0] == pairs  # weight 0: the judgments
    with pytest.raises(ValueError, match="teacher_weight"):
        distilled_labels(teacher, pairs, 1.5)
