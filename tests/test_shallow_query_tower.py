"""eval.shallow_query_tower: a pruned query tower learns the full tower's query vectors,
and the command measures it beside the full tower on a built snapshot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shopsearch.eval.shallow_query_tower import distil_query_tower, main
from shopsearch.retrieval.encoders import Encoder

pytestmark = pytest.mark.slow

TEXTS = [
    "cordless drill",
    "led light bulb",
    "garden hose 50 ft",
    "kitchen faucet chrome",
    "deck screws",
    "ceiling fan with light",
    "paint roller",
    "toilet seat",
]


def test_a_two_layer_student_learns_the_full_towers_vectors(encoder: Encoder) -> None:
    teacher = encoder.model
    targets = np.asarray(teacher.encode(TEXTS, normalize_embeddings=True), dtype=np.float32)

    def cosine(model: object) -> float:
        vectors = np.asarray(
            model.encode(TEXTS, normalize_embeddings=True),  # type: ignore[attr-defined]
            dtype=np.float32,
        )
        return float((vectors * targets).sum(axis=1).mean())

    untrained = distil_query_tower(teacher, 2, TEXTS, targets, steps=0, batch_size=8)
    trained = distil_query_tower(teacher, 2, TEXTS, targets, steps=40, batch_size=8)
    assert trained[0].auto_model.config.num_hidden_layers == 2
    assert len(trained[0].auto_model.encoder.layer) == 2
    assert cosine(trained) > cosine(untrained) + 0.01
    # The teacher itself is left whole.
    assert len(teacher[0].auto_model.encoder.layer) == 6


def test_the_command_measures_students_beside_the_full_tower(
    sample_index: Path, homedepot_dir: Path, onnx_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    args = ["--keep", "2", "--train-queries", "64", "--steps", "3", "--dev-queries", "20"]
    main(
        [
            "--index-dir",
            str(sample_index),
            "--homedepot-dir",
            str(homedepot_dir),
            *args,
            "--out",
            str(out),
        ]
    )
    report = json.loads(out.read_text())
    assert set(report) == {"6 layers (the item tower)", "2 layers (distilled)"}
    assert report["6 layers (the item tower)"]["cosine_min"] == 1.0
    for row in report.values():
        assert 0.0 <= row["ndcg@10"] <= 1.0 and row["encode_int8_p50_ms"] > 0
