"""Catalog scale generator: counts, unique ids, determinism, perturbed titles, chunked files."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from shopsearch.eval.scale import scale_catalog, write_catalog
from shopsearch.eval.scale_bench import approx_recall, run_scale_bench
from shopsearch.indexer.snapshot import SnapshotError
from shopsearch.retrieval.encoders import Encoder

BASE = [
    {"id": 1, "title": "BEHR Premium 1-gal. #SC-141 Tugboat Wood Coating", "price": 30.0},
    {"id": 2, "title": "BEHR Premium Plus 5-gal. Flat Interior Paint in White", "price": 120.0},
    {"id": 3, "title": "BEHR Marquee 1-qt. Satin Exterior Paint", "price": 25.0},
    {"id": 4, "title": "Delta Vero 1-Handle Shower Faucet Trim Kit in Chrome", "price": 99.0},
    {"id": 5, "title": "Simpson Strong-Tie 3/4 in. x 8 ft. Angle", "price": None},
    {"id": 6, "title": "Everbilt Heavy Duty Door Stop", "price": 4.5},
]


def test_counts_ids_and_originals_first() -> None:
    rows = list(scale_catalog(BASE, 200, seed=7))
    assert len(rows) == 200
    assert len({r["id"] for r in rows}) == 200
    assert rows[:6] == [{**b, "id": str(b["id"])} for b in BASE]  # originals, ids as strings
    assert all(r["id"].startswith("syn-") for r in rows[6:])
    assert {r.keys() == BASE[0].keys() for r in rows} == {True}
    # Every variant differs from its source title; most titles are new.
    for i, row in enumerate(rows[6:]):
        assert row["title"] != BASE[i % 6]["title"]
    assert len({r["title"] for r in rows}) > 150
    # Prices are scaled by 0.8..1.25; a missing price stays missing.
    assert all(24.0 <= r["price"] <= 37.5 for r in rows[6::6])  # variants of product 1
    assert all(r["price"] is None for r in rows[10::6])  # variants of product 5


def test_perturbation_kinds_occur() -> None:
    titles = [r["title"] for r in scale_catalog(BASE, 600, seed=1)][6:]
    assert any(not t.startswith(("BEHR", "Delta", "Simpson", "Everbilt")) for t in titles)  # brand
    assert any("5-gal." not in t and "Flat Interior" in t for t in titles)  # size changed
    assert any("Faucet" in t and "Chrome" not in t for t in titles)  # colour swapped
    assert any(t.startswith("Everbilt") and t.endswith((" in White", " in Black")) for t in titles)
    assert any("Heavy Duty" not in t and "Duty Heavy" in t for t in titles)  # word order


def test_deterministic_and_seeded() -> None:
    first = list(scale_catalog(BASE, 100, seed=3))
    assert first == list(scale_catalog(BASE, 100, seed=3))
    assert first != list(scale_catalog(BASE, 100, seed=4))
    # Row i does not depend on how many rows are asked for: a prefix is stable.
    assert list(scale_catalog(BASE, 50, seed=3))[:6] == first[:6]
    fewer = list(scale_catalog(BASE, 4))
    assert [r["id"] for r in fewer] == ["1", "2", "3", "4"]


def test_dataframe_and_field_names() -> None:
    frame = pd.DataFrame(
        {"product_uid": ["100001", "100002"], "product_title": ["Angle 12-Gauge", "Hose 50 ft."]}
    )
    rows = list(
        scale_catalog(
            frame.to_dict("records"), 10, id_field="product_uid", title_field="product_title"
        )
    )
    assert len({r["product_uid"] for r in rows}) == 10


def test_brand_field_follows_title() -> None:
    base = [{"id": f"x{i}", "title": f"Delta Faucet Part {i}", "brand": "Delta"} for i in range(4)]
    variants = list(itertools.islice(scale_catalog(base, 300, seed=2), 4, None))
    assert all(row["title"].startswith(row["brand"]) for row in variants)
    assert any(row["brand"] != "Delta" for row in variants)


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.1000000"):
        scale_catalog(BASE, 1_000_001)
    scale_catalog(BASE, 1_000_001, max_products=2_000_000)  # allowed when raised on purpose
    with pytest.raises(ValueError, match="empty"):
        scale_catalog([], 10)
    with pytest.raises(ValueError, match="no 'title'"):
        scale_catalog([{"id": 1, "name": "x"}], 10)
    with pytest.raises(ValueError, match="repeat"):
        scale_catalog([{"id": 1, "title": "a"}, {"id": 1, "title": "b"}], 10)
    with pytest.raises(ValueError, match="choose another id_prefix"):
        scale_catalog([{"id": "syn-0", "title": "a"}], 3)


def test_write_catalog_csv_and_parquet(tmp_path: Path) -> None:
    n = write_catalog(scale_catalog(BASE, 250, seed=1), tmp_path / "c.csv", chunk_size=64)
    assert n == 250
    with (tmp_path / "c.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 250 and list(rows[0]) == ["id", "title", "price"]
    n = write_catalog(scale_catalog(BASE, 250, seed=1), tmp_path / "c.parquet", chunk_size=64)
    table = pq.read_table(tmp_path / "c.parquet")
    assert n == table.num_rows == 250
    assert table.column("id").to_pylist() == [r["id"] for r in rows]
    with pytest.raises(ValueError, match=r"choose \.csv or \.parquet"):
        write_catalog([], tmp_path / "c.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.csv", "c.parquet"]  # no .partial


def test_write_catalog_failure_leaves_no_catalog(tmp_path: Path) -> None:
    rows = [*BASE, {"id": 7, "title": "Odd", "colour": "red"}]  # a field the first row lacks
    with pytest.raises(ValueError, match="the first row lacks"):
        write_catalog(rows, tmp_path / "c.parquet", chunk_size=2)
    assert not (tmp_path / "c.parquet").exists()


def test_approx_recall_reads_the_key_the_build_wrote(tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    probes = {"probe_queries": 3, "probe_kind": "title words"}
    big = {"counts": {"products": 5000}, "approx_vs_exact": {**probes, "recall@100": 0.97}}
    assert approx_recall(big, path, 100) == 0.97
    small = {"counts": {"products": 60}, "approx_vs_exact": {"recall@60": 1.0, **probes}}
    assert approx_recall(small, path, 100) == 1.0
    # Another recall key is not taken for the one meant (the old code took the first).
    other = {"counts": {"products": 5000}, "approx_vs_exact": {"recall@10": 0.5, **probes}}
    with pytest.raises(
        SnapshotError, match=r"manifest\.json: 'approx_vs_exact' has no 'recall@100'"
    ):
        approx_recall(other, path, 100)
    with pytest.raises(SnapshotError, match=r"manifest\.json: no 'counts\.products'"):
        approx_recall({"approx_vs_exact": {"recall@100": 1.0}}, path, 100)


@pytest.mark.slow
def test_scale_bench_builds_and_measures_each_size(tmp_path: Path, encoder: Encoder) -> None:
    """Two tiny sizes end to end: build, then a fresh serving process loads and queries."""
    points = run_scale_bench(
        BASE, [60, 120], tmp_path, encoder, ["paint", "shower faucet", "angle"] * 8
    )
    assert [p.products for p in points] == [60, 120]
    first, second = points
    assert first.encoded == 60 and second.encoded < 120 - 50  # the second reuses cached vectors
    for point in points:
        assert point.serving_rss_mib > point.rss_growth_mib > 0
        assert set(point.p50_ms) == {"hybrid", "dense", "lexical"}
        assert all(v > 0 for v in point.p50_ms.values())
        assert point.disk_mib > 0 and point.approx_recall_at_100 > 0.99  # Flat: exact up to ties
