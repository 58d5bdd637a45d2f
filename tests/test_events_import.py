"""History imports: the Online Retail mapping and cleaning rules (on a hand-made file
and on the real one), jsonl/csv files through `shopsearch events import`, idempotence."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from shopsearch.api.cli import app
from shopsearch.indexer.events import EventStore, pseudonymise
from shopsearch.indexer.events.importer import import_events, read_online_retail, retail_events
from tests.conftest import DATASETS, require

KEY = "import-test-key-0123456789"
RETAIL = DATASETS / "online-retail" / "transactions.csv.gz"

HEADER = "InvoiceNo,StockCode,Description,Quantity,InvoiceDate,UnitPrice,CustomerID,Country"
ROWS = [
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,6,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536365,71053,WHITE METAL LANTERN,6,2010-12-01 08:26:00,3.39,17850.0,United Kingdom",
    "536365,85123A,WHITE HANGING HEART T-LIGHT HOLDER,2,2010-12-01 08:26:00,2.55,17850.0,United Kingdom",
    "536366,22633,HAND WARMER UNION JACK,6,2010-12-01 08:28:00,1.85,,United Kingdom",
    "C536379,D,Discount,-1,2010-12-01 09:41:00,27.5,14527.0,United Kingdom",
    "C536383,35004C,SET OF 3 COLOURED  FLYING DUCKS,-1,2010-12-01 09:49:00,4.65,15311.0,United Kingdom",
    "A563185,B,Adjust bad debt,1,2011-08-12 14:50:00,11062.06,,United Kingdom",
    "536370,POST,POSTAGE,3,2010-12-01 08:45:00,18.0,12583.0,France",
    "536370,m,Manual,1,2010-12-01 08:45:00,2.0,12583.0,France",
    "536370,gift_0001_20,Dotcomgiftshop Gift Voucher £20.00,1,2010-12-01 08:45:00,17.02,12583.0,France",
    "536414,22139,,56,2010-12-01 11:52:00,0.0,,United Kingdom",
    "536415,22140,BROKEN,-5,2010-12-01 11:53:00,0.0,,United Kingdom",
    "536370,22728,ALARM CLOCK BAKELIKE PINK,24,2010-12-01 08:45:00,3.75,12583.0,France",
]


@pytest.fixture
def retail_file(tmp_path: Path) -> Path:
    path = tmp_path / "retail.csv.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join([HEADER, *ROWS]) + "\n")
    return path


def test_online_retail_rows_map_to_purchases_as_documented(retail_file: Path) -> None:
    history = read_online_retail(retail_file)
    assert history.rows_read == len(ROWS)
    assert history.skipped == {
        "cancellation": 2,
        "adjustment": 1,
        "not_a_product": 3,  # POST, lower-case m, the gift voucher
        "returned_or_adjusted": 1,
        "no_price": 1,
    }
    events = list(retail_events(history, KEY.encode()))
    alice, france = (pseudonymise(c, KEY.encode()) for c in ("17850", "12583"))
    got = [(e.event_id, e.session, e.product_id, e.user_hash, e.quantity) for e in events]
    assert got == [
        ("retail:536365:85123A:0", "536365", "85123A", alice, 6.0),
        ("retail:536365:71053:0", "536365", "71053", alice, 6.0),
        ("retail:536365:85123A:1", "536365", "85123A", alice, 2.0),  # same code again
        ("retail:536366:22633:0", "536366", "22633", None, 6.0),  # guest
        ("retail:536370:22728:0", "536370", "22728", france, 24.0),
    ]
    assert {e.kind for e in events} == {"purchase"}
    assert events[0].ts == pd.Timestamp("2010-12-01 08:26:00", tz="UTC")


def test_import_is_idempotent(retail_file: Path, tmp_path: Path) -> None:
    history = read_online_retail(retail_file)
    with EventStore(tmp_path / "e.db") as store:
        first = import_events(store, retail_events(history, KEY.encode()), batch_size=2)
        again = import_events(store, retail_events(history, KEY.encode()), batch_size=2)
        assert (first.stored, first.duplicates) == (5, 0)
        assert (again.stored, again.duplicates) == (0, 5)
        df = store.interactions()
    assert list(df["basket"]) == ["536365", "536365", "536365", "536366", "536370"]
    assert list(df["user"] == "") == [False, False, False, True, False]


def test_the_real_online_retail_file_maps_by_the_rules() -> None:
    require(RETAIL.is_file(), f"Online Retail data not found at {RETAIL}")
    raw = pd.read_csv(RETAIL, dtype=str, keep_default_na=False)
    history = read_online_retail(RETAIL)
    lines = history.lines
    assert history.rows_read == len(raw) == 431_673
    assert len(lines) + sum(history.skipped.values()) == len(raw)
    # Every rule of ../shared/datasets/README.md holds for what is kept...
    assert not lines["invoice"].str.startswith(("C", "A")).any()
    assert (lines["quantity"] > 0).all()
    assert not lines["stock_code"].str.upper().isin(["POST", "D", "M", "DOT", "BANK CHARGES"]).any()
    # ... and each rule removed something real.
    assert all(n > 0 for n in history.skipped.values()), history.skipped
    assert lines["ts"].min() == pd.Timestamp("2010-12-01 08:26:00", tz="UTC")
    assert lines["ts"].max() < pd.Timestamp("2011-11-01", tz="UTC")
    # Shoppers: the customers of the kept lines, guests apart.
    ids = raw["CustomerID"][raw["CustomerID"] != ""].astype(float).astype(int).astype(str)
    assert set(lines["customer"]) - {""} <= set(ids)
    assert 3_500 <= lines["customer"].nunique() <= 4_500  # "about 4,000 customers"
    assert lines.duplicated(["invoice", "stock_code", "line"]).sum() == 0  # ids are unique


@pytest.mark.slow
def test_importing_the_real_file_is_complete_and_idempotent(tmp_path: Path) -> None:
    require(RETAIL.is_file(), f"Online Retail data not found at {RETAIL}")
    db = tmp_path / "events.db"
    runner = CliRunner()
    env = {"SHOPSEARCH_USER_KEY": KEY, "SHOPSEARCH_EVENTS_DB": str(db)}
    started = time.perf_counter()
    result = runner.invoke(
        app, ["events", "import", str(RETAIL), "--format", "online-retail"], env=env
    )
    seconds = time.perf_counter() - started
    assert result.exit_code == 0, result.output
    # Speed is measured by `eval.events_bench` and the README; this only reports it.
    print(f"imported the real file in {seconds:.1f}s")
    with EventStore(db) as store:
        kept = store.count()
        df = store.interactions(until=pd.Timestamp("2010-12-02", tz="UTC").to_pydatetime())
    assert kept == len(read_online_retail(RETAIL).lines)
    assert (df["kind"] == "purchase").all() and df["basket"].str.fullmatch(r"\d{6}").all()
    again = runner.invoke(
        app, ["events", "import", str(RETAIL), "--format", "online-retail"], env=env
    )
    assert again.exit_code == 0 and f"{kept:,} already there" in again.output.replace("\n", " ")
    with EventStore(db) as store:
        assert store.count() == kept


def test_jsonl_and_csv_files_import_by_the_api_rules(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    env = {"SHOPSEARCH_USER_KEY": KEY, "SHOPSEARCH_EVENTS_DB": str(db)}
    good = [
        {
            "event_id": "j1",
            "type": "view",
            "user": "bob",
            "session": "s",
            "product_id": "p1",
            "timestamp": "2024-05-01T12:00:00Z",
        },
        {
            "event_id": "j2",
            "type": "purchase",
            "session": "s",
            "product_id": "p2",
            "timestamp": "2024-05-01T12:05:00+02:00",
            "quantity": 3,
        },
    ]
    bad = {
        "event_id": "j3",
        "type": "buy",
        "session": "s",
        "product_id": "p3",
        "timestamp": "2024-05-01T12:00:00Z",
    }
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*good, bad]) + "\n")
    runner = CliRunner()
    refused = runner.invoke(app, ["events", "import", str(path)], env=env)
    assert refused.exit_code == 2 and "line 3: type" in refused.output
    with EventStore(db) as store:
        assert store.count() == 0  # nothing of a file with a bad line
    skipped = runner.invoke(app, ["events", "import", str(path), "--skip-bad-rows"], env=env)
    assert skipped.exit_code == 0, skipped.output
    csv_path = tmp_path / "more.csv"
    csv_path.write_text(
        "event_id,type,user,session,product_id,timestamp,position\n"
        "c1,click,,s2,p9,2024-05-02T08:00:00Z,4\n"
    )
    assert runner.invoke(app, ["events", "import", str(csv_path)], env=env).exit_code == 0
    with EventStore(db) as store:
        df = store.interactions()
    assert list(df["item"]) == ["p2", "p1", "p9"]  # 12:05+02:00 is 10:05 UTC
    assert list(df["user"]) == ["", pseudonymise("bob", KEY.encode()), ""]
    assert list(df["quantity"]) == [3.0, 1.0, 1.0]
    wrong = runner.invoke(
        app,
        ["events", "import", str(RETAIL if RETAIL.is_file() else csv_path), "--format", "csv"],
        env=env,
    )
    if RETAIL.is_file():
        assert wrong.exit_code == 1 and "--format online-retail" in wrong.output.replace("\n", " ")


def test_import_without_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_text("")
    result = CliRunner().invoke(
        app, ["events", "import", str(path)], env={"SHOPSEARCH_USER_KEY": ""}
    )
    assert result.exit_code == 2 and "SHOPSEARCH_USER_KEY" in result.output
