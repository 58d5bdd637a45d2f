from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from shopsearch.indexer.catalog import CatalogError, ColumnMapping, load_catalog
from shopsearch.retrieval.types import (
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_ID_CHARS,
    MAX_TITLE_CHARS,
)

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


# -- values as written: ids never float-coerced, non-finite prices refused ----------------


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_numeric_ids_stay_as_written_next_to_a_row_without_id(tmp_path: Path) -> None:
    # pandas read these ids as floats once one row lacked an id: "1000.0", "1001.0", ...
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            '{"id": 1000, "title": "Drill", "price": 19.90}',
            '{"id": 1001, "title": "Saw"}',
            '{"title": "No id"}',
            '{"id": 12345678901234567890, "title": "Long id"}',
            '{"id": 1.50, "title": "Odd id"}',
        ],
    )
    products, report = load_catalog(path, skip_bad_rows=True)
    assert [p.id for p in products] == ["1000", "1001", "12345678901234567890", "1.50"]
    assert products[0].price == 19.9
    assert [str(p) for p in report.skipped] == ["row 3: missing id (column 'id')"]


@pytest.mark.parametrize("written", ["NaN", "Infinity", "-Infinity", '"nan"', '"inf"'])
def test_jsonl_non_finite_price_is_a_bad_row(tmp_path: Path, written: str) -> None:
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [
            '{"id": "A", "title": "Drill", "price": 5}',
            f'{{"id": "B", "title": "Saw", "price": {written}}}',
        ],
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    [problem] = info.value.problems
    assert problem.row == 2 and problem.id == "B"
    assert problem.reason.startswith("price ") and "is not a finite number" in problem.reason
    products, report = load_catalog(path, skip_bad_rows=True)
    assert [p.id for p in products] == ["A"] and len(report.skipped) == 1


@pytest.mark.parametrize("written", ["nan", "NaN", "inf", "-inf"])
def test_csv_non_finite_price_is_a_bad_row(tmp_path: Path, written: str) -> None:
    path = tmp_path / "c.csv"
    path.write_text(f"id,title,price\n0012,Drill,5\n1e3,Saw,{written}\n")
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    [problem] = info.value.problems
    assert (problem.row, problem.id) == (2, "1e3")
    assert problem.reason.startswith(f"price {written!r} is not a finite number")
    [drill], _ = load_catalog(path, skip_bad_rows=True)
    assert drill.id == "0012"  # CSV ids are text: zeros kept, nothing parsed as a number


def test_parquet_int_ids_with_a_null_and_nan_price(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "c.parquet"
    table = pa.table(
        {
            "id": pa.array([1000, None, 1002, 1003], type=pa.int64()),
            "title": ["Drill", "No id", "Saw", "Lamp"],
            "price": pa.array([1.5, 2.0, None, float("nan")], type=pa.float64()),
        }
    )
    pq.write_table(table, path)
    products, report = load_catalog(path, skip_bad_rows=True)
    # A null id does not turn the int column into floats; a null price is no price.
    assert [(p.id, p.price) for p in products] == [("1000", 1.5), ("1002", None)]
    assert [str(p) for p in report.skipped] == [
        "row 2: missing id (column 'id')",
        "row 4 (id 1003): price nan is not a finite number (write it like 19.99, or leave it empty)",
    ]


def test_parquet_float_ids_are_refused_not_guessed(tmp_path: Path) -> None:
    path = tmp_path / "c.parquet"
    pd.DataFrame({"id": [1000.0, 1001.0], "title": ["Drill", "Saw"]}).to_parquet(path)
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert [p.row for p in info.value.problems] == [1, 2]
    assert "id 1000.0 is a float, not text or an integer" in str(info.value)


# -- invalid UTF-8: a bad row, by row number, skippable ------------------------------------


def test_csv_invalid_utf8_names_the_row_and_can_be_skipped(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_bytes(
        b"id,title,brand\nA1,Drill,Bosch\nA2,Sa\xffw,Makita\nA3,Hammer,Estwing\n"
        b"A4,S\xc3\xa4ge,Bosch\n"
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    message = str(info.value)
    assert "1 bad row(s)" in message
    assert "row 2 (id A2): invalid UTF-8 in column 'title' (byte 0xff at character 3)" in message
    products, report = load_catalog(path, skip_bad_rows=True)
    assert [(p.id, p.title) for p in products] == [
        ("A1", "Drill"),
        ("A3", "Hammer"),
        ("A4", "Säge"),
    ]
    assert report.rows_read == 4 and report.to_dict()["skipped"] == 1


def test_jsonl_invalid_utf8_and_broken_lines_are_bad_rows_by_line(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "A1", "title": "Drill"}\n'
        b'{"id": "A2", "title": "Sa\xe2w"}\n'
        b"\n"
        b'{"id": "A4", "title": "Saw"\n'
        b'["A5", "Lamp"]\n'
        b'{"id": "A6", "title": "Lamp \xc3\xa9"}\n'
    )
    with pytest.raises(CatalogError) as info:
        load_catalog(path)
    assert [(p.row, p.id) for p in info.value.problems] == [(2, "A2"), (4, None), (5, None)]
    message = str(info.value)
    assert "row 2 (id A2): invalid UTF-8 in column 'title' (byte 0xe2 at character 3)" in message
    assert "row 4: not valid JSON" in message
    assert "row 5: a JSON list, not an object" in message
    products, report = load_catalog(path, skip_bad_rows=True)
    assert [(p.id, p.title) for p in products] == [("A1", "Drill"), ("A6", "Lamp é")]
    assert report.rows_read == 5 and len(report.skipped) == 3


def test_parquet_invalid_utf8_is_a_bad_row(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Arrow checks no UTF-8 on a view: the way a broken writer produces such a file.
    titles = pa.array([b"Drill", b"Sa\xffw"], type=pa.binary()).view(pa.string())
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["A1", "A2"], "title": titles}), path)
    with pytest.raises(CatalogError, match=r"row 2 \(id A2\): invalid UTF-8 in column 'title'"):
        load_catalog(path)
    products, report = load_catalog(path, skip_bad_rows=True)
    assert [p.id for p in products] == ["A1"] and len(report.skipped) == 1


def test_a_json_array_file_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    path.write_text('[\n{"id": "A1", "title": "Drill"}\n]\n')
    with pytest.raises(CatalogError, match="one JSON array; write one JSON object per line"):
        load_catalog(path)


# -- length limits -------------------------------------------------------------------------


def test_over_long_values_are_bad_rows(tmp_path: Path) -> None:
    rows = [
        {"id": "A1", "title": "t" * MAX_TITLE_CHARS, "description": "d" * MAX_DESCRIPTION_CHARS},
        {"id": "A2", "title": "t" * 1_000_000, "description": ""},
        {"id": "A3", "title": "Saw", "description": "d" * (MAX_DESCRIPTION_CHARS + 1)},
        {"id": "i" * (MAX_ID_CHARS + 1), "title": "Lamp", "description": ""},
        {
            "id": "A5",
            "title": "Hammer",
            "description": "",
            "color": "c" * (MAX_ATTRIBUTE_VALUE_CHARS + 1),
        },
    ]
    jsonl = write_jsonl(tmp_path / "c.jsonl", [json.dumps(r) for r in rows])
    csv = write_csv(tmp_path / "c.csv", rows)
    for path in (jsonl, csv):
        with pytest.raises(CatalogError) as info:
            load_catalog(path)
        reasons = {p.row: p.reason for p in info.value.problems}
        assert reasons == {
            2: f"title is 1,000,000 characters (column 'title'); at most {MAX_TITLE_CHARS:,} are allowed",
            3: f"description is {MAX_DESCRIPTION_CHARS + 1:,} characters (column 'description'); "
            f"at most {MAX_DESCRIPTION_CHARS:,} are allowed",
            4: f"id is {MAX_ID_CHARS + 1} characters (column 'id'); at most {MAX_ID_CHARS} are allowed",
            5: f"attribute 'color' is {MAX_ATTRIBUTE_VALUE_CHARS + 1:,} characters; "
            f"at most {MAX_ATTRIBUTE_VALUE_CHARS:,} are allowed",
        }
        products, report = load_catalog(path, skip_bad_rows=True)
        assert [p.id for p in products] == ["A1"] and len(report.skipped) == 4
