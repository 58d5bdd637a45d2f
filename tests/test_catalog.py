from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from indexer.catalog import CatalogError, ColumnMapping, load_catalog

ROWS = [
    {
        "id": "A1",
        "title": "Cordless Drill",
        "brand": "DeWalt",
        "price": "99.00",
        "in_stock": "true",
        "color": "Yellow",
    },
    {"id": "", "title": "No id", "brand": "X", "price": "1", "in_stock": "true", "color": ""},
    {"id": "A3", "title": "", "brand": "X", "price": "1", "in_stock": "false", "color": ""},
    {"id": "A1", "title": "Duplicate", "brand": "X", "price": "1", "in_stock": "true", "color": ""},
    {
        "id": "A5",
        "title": "Bad price",
        "brand": "X",
        "price": "ten dollars",
        "in_stock": "true",
        "color": "",
    },
    {
        "id": "A6",
        "title": "Hammer",
        "brand": "Estwing",
        "price": "",
        "in_stock": "",
        "color": "Blue",
    },
]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_bad_rows_stop_the_build_and_are_named(tmp_path: Path) -> None:
    with pytest.raises(CatalogError) as info:
        load_catalog(write_csv(tmp_path / "c.csv", ROWS))
    message = str(info.value)
    assert "4 bad row(s)" in message and "--skip-bad-rows" in message
    assert "row 2: missing id" in message
    assert "row 3 (id A3): missing title" in message
    assert "row 4 (id A1): duplicate id 'A1' (first seen in row 1)" in message
    assert "row 5 (id A5): price 'ten dollars' is not a number" in message
    assert [p.row for p in info.value.problems] == [2, 3, 4, 5]


def test_skip_bad_rows_counts_them(tmp_path: Path) -> None:
    products, report = load_catalog(write_csv(tmp_path / "c.csv", ROWS), skip_bad_rows=True)
    assert [p.id for p in products] == ["A1", "A6"]
    assert report.rows_read == 6 and report.products == 2 and len(report.skipped) == 4
    assert report.to_dict()["skipped"] == 4
    drill, hammer = products
    assert (
        drill.price == 99.0 and drill.in_stock is True and drill.attributes == {"color": "Yellow"}
    )
    assert hammer.price is None and hammer.in_stock is None


def test_formats_agree(tmp_path: Path) -> None:
    good = [
        r for r in ROWS if r["id"] in {"A1", "A6"} and r["title"] in {"Cordless Drill", "Hammer"}
    ]
    csv = write_csv(tmp_path / "c.csv", good)
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in good) + "\n")
    parquet = tmp_path / "c.parquet"
    pd.DataFrame(good).to_parquet(parquet)
    loaded = [load_catalog(p)[0] for p in (csv, jsonl, parquet)]
    assert loaded[0] == loaded[1] == loaded[2]


def test_jsonl_native_types(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(
        json.dumps(
            {
                "sku": 7,
                "name": "Lamp",
                "price": 12.5,
                "in_stock": False,
                "category": "Home > Lighting",
            }
        )
        + "\n"
    )
    [product], _ = load_catalog(path, ColumnMapping(id="sku", title="name"))
    assert product.id == "7" and product.price == 12.5 and product.in_stock is False
    assert product.category_path == ["Home", "Lighting"]


def test_missing_id_column_names_the_option(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "c.csv", [{"sku": "1", "title": "x"}])
    with pytest.raises(
        CatalogError, match=r"id column 'id' is missing; columns found: sku, title\. .*--id-field"
    ):
        load_catalog(path)


def test_unknown_format_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="unknown catalog format"):
        (tmp_path / "c.xml").write_text("<x/>")
        load_catalog(tmp_path / "c.xml")
    with pytest.raises(CatalogError, match="does not exist"):
        load_catalog(tmp_path / "nope.csv")


def test_homedepot_products_load_with_mapping(homedepot_dir: Path) -> None:
    products, report = load_catalog(
        homedepot_dir / "products.csv", ColumnMapping(id="product_uid", title="product_title")
    )
    assert len(products) == 54_667 and not report.skipped
    assert len({p.id for p in products}) == 54_667
