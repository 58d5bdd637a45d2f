"""eval.int8_variants builds every graph it compares and measures them on real queries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shopsearch.eval.int8_variants import main

pytestmark = pytest.mark.slow


def test_every_variant_is_built_and_compared_with_fp32(
    homedepot_dir: Path, onnx_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "report.json"
    args = ["--calibration", "8", "--queries", "12", "--out", str(out)]
    main(["--homedepot-dir", str(homedepot_dir), *args])
    report = json.loads(out.read_text())
    assert set(report) == {
        "fp32",
        "dynamic int8",
        "static int8 (MinMax)",
        "static int8 (Percentile)",
        "fused int8",
    }
    assert report["fp32"]["cosine_min"] == pytest.approx(1.0, abs=1e-5)
    # Dynamic int8 is what onnx-int8 serves: close to fp32 on every query.
    assert report["dynamic int8"]["cosine_min"] > 0.95
    # The fused graph computes the same function (int8 error aside).
    assert report["fused int8"]["cosine_median"] > 0.98
    for name, row in report.items():
        assert row["one_query_p50_ms"] > 0 and row["batch50_ms"] > 0, name
        assert -1.0 <= row["cosine_min"] <= row["cosine_median"] <= 1.0 + 1e-6, name
