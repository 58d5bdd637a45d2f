"""Merchandising rules (issue 16, item 4): pin, boost, bury and hide.

Unit tests of :func:`rerank.merchandising.apply_rules` on a hand-made table (positions,
filters, conflicts, matching, validation), of the versioned store and its audit log, and
end to end through the real app on the sample catalog: rules put over the admin API (and
from a file with the CLI) move the real search's hits, a filter still excludes a pinned
product, explain tells, the result cache never answers with the old rules.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr, ValidationError
from typer.testing import CliRunner

from shopsearch.api.app import create_app
from shopsearch.api.cli import app as cli_app
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.merch_rules import AUDIT_LOG, RulesError, RulesStore
from shopsearch.rerank.merch_rule_model import RuleSet, describe_change
from shopsearch.rerank.merchandising import MerchResult, Rulebook, apply_rules
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.filters import Filters, ProductTable
from shopsearch.retrieval.types import Candidate, Product

# -- unit: apply_rules on a hand-made table ----------------------------------------------

#: P0..P9: even rows brand "Acme", odd "Bolt"; P0-P4 "Tools > Drills", P5-P9 "Paint";
#: every third (P0, P3, P6, P9) out of stock; colour red for P2 and P7.
PRODUCTS = [
    Product(
        id=f"P{i}",
        title=f"product {i}",
        brand="Acme" if i % 2 == 0 else "Bolt",
        category="Tools > Drills" if i < 5 else "Paint",
        in_stock=i % 3 != 0,
        attributes={"color": "red" if i in (2, 7) else "blue"},
    )
    for i in range(10)
]
TABLE = ProductTable(PRODUCTS)


def candidates(*rows: int) -> list[Candidate]:
    """Candidates in the given order, with descending fused scores."""
    return [Candidate(row=r, fused_score=1.0 - k / 100) for k, r in enumerate(rows)]


def book(*rules: dict[str, Any]) -> Rulebook:
    return Rulebook.build(RuleSet.model_validate({"rules": list(rules)}), version=7)


def ids(result: MerchResult) -> list[str]:
    return [TABLE.products[c.row].id for c in result.candidates]


def run(
    rules: Rulebook, rows: list[int], query: str = "drill", filters: Filters | None = None
) -> MerchResult:
    return apply_rules(rules, candidates(*rows), TABLE, filters or Filters(), [query])


ANY: dict[str, Any] = {"any": True}


def test_no_rule_matches_leaves_the_list_as_it_came() -> None:
    rules = book({"when": {"query": "paint"}, "action": "hide", "products": ["P1"]})
    result = run(rules, [1, 2, 3])
    assert ids(result) == ["P1", "P2", "P3"]
    assert result.notes == {} and result.outcomes == []


def test_pin_moves_a_candidate_to_its_position() -> None:
    rules = book({"when": {"query": "drill"}, "action": "pin", "product": "P4", "position": 2})
    result = run(rules, [1, 2, 3, 4])
    assert ids(result) == ["P1", "P4", "P2", "P3"]
    assert result.notes[4] == ["pinned at 2 by rule 0 (asked for 2)"]


def test_pinned_product_not_retrieved_is_inserted_when_it_passes_the_filters() -> None:
    rules = book({"when": ANY, "action": "pin", "product": "P2", "position": 1})
    result = run(rules, [1, 3], filters=Filters(category="Tools"))
    assert ids(result) == ["P2", "P1", "P3"]
    inserted = result.candidates[0]
    assert inserted.fused_score == 0.0 and inserted.dense_rank is None  # no leg found it
    assert "inserted: no leg retrieved it" in result.notes[2][0]


def test_pinned_product_that_the_filters_exclude_is_not_shown() -> None:
    rules = book({"when": ANY, "action": "pin", "product": "P7", "position": 1})
    # P7 is "Paint" and "Bolt": both filters exclude it
    for filters in (Filters(category="Tools"), Filters(brand=("Acme",))):
        result = run(rules, [0, 2, 4], filters=filters)
        assert "P7" not in ids(result)
        assert ids(result) == ["P0", "P2", "P4"]
        assert result.outcomes == [
            "rule 0: pin P7 at 1: not shown (excluded by the request's filters)"
        ]


def test_pin_of_a_product_the_snapshot_lacks_shows_nothing() -> None:
    rules = book({"when": ANY, "action": "pin", "product": "GONE", "position": 1})
    result = run(rules, [1, 2])
    assert ids(result) == ["P1", "P2"]
    assert "no such product" in result.outcomes[0]


def test_pin_past_the_end_puts_the_product_last() -> None:
    rules = book({"when": ANY, "action": "pin", "product": "P1", "position": 50})
    result = run(rules, [1, 2, 3])
    assert ids(result) == ["P2", "P3", "P1"]
    assert result.notes[1] == ["pinned at 3 by rule 0 (asked for 50)"]


def test_earlier_pin_wins_a_position_and_a_product_pinned_twice_stays_first() -> None:
    rules = book(
        {"name": "a", "when": ANY, "action": "pin", "product": "P3", "position": 1},
        {"name": "b", "when": ANY, "action": "pin", "product": "P4", "position": 1},
        {"name": "c", "when": ANY, "action": "pin", "product": "P3", "position": 3},
    )
    result = run(rules, [1, 2, 3, 4, 5])
    assert ids(result) == ["P3", "P4", "P1", "P2", "P5"]
    assert result.notes[4] == ["pinned at 2 by rule 1 'b' (asked for 1)"]
    assert "ignored (already pinned by rule 0 'a')" in result.outcomes[-1]


def test_hide_removes_products_and_wins_over_pin() -> None:
    rules = book(
        {"when": ANY, "action": "pin", "product": "P2", "position": 1},
        {"when": {"query": "drill"}, "action": "hide", "products": ["P2", "P3"]},
    )
    result = run(rules, [1, 2, 3, 4])
    assert ids(result) == ["P1", "P4"]
    assert any("not shown (hidden by rule 1)" in o for o in result.outcomes)


def test_boost_and_bury_move_stably_and_cancel_each_other() -> None:
    rules = book(
        {"when": ANY, "action": "boost", "match": {"brand": ["acme"]}},  # case-insensitive
        {"when": ANY, "action": "bury", "match": {"in_stock": False}},
    )
    # levels: P0 acme+oos 0, P1 0, P2 acme +1, P3 oos -1, P4 acme +1, P5 0, P6 acme+oos 0
    result = run(rules, [0, 1, 2, 3, 4, 5, 6])
    assert ids(result) == ["P2", "P4", "P0", "P1", "P5", "P6", "P3"]
    assert result.notes[3] == ["buried by rule 1 (in_stock=false)"]
    assert result.notes[0] == [
        "boosted by rule 0 (brand=acme)",
        "buried by rule 1 (in_stock=false)",
    ]


def test_boost_by_category_prefix_and_attribute() -> None:
    rules = book(
        {"when": ANY, "action": "boost", "match": {"category": "paint"}},
        {"when": ANY, "action": "boost", "match": {"attributes": {"color": ["RED"]}}},
    )
    result = run(rules, [1, 2, 6, 7])
    assert ids(result) == ["P7", "P2", "P6", "P1"]  # P7: both (+2); P2, P6: one each


def test_pin_overrides_boost_and_scores_are_never_changed() -> None:
    rules = book(
        {"when": ANY, "action": "boost", "match": {"brand": ["Bolt"]}},
        {"when": ANY, "action": "pin", "product": "P2", "position": 1},
    )
    given = candidates(0, 1, 2, 3)
    before = [(c.row, c.fused_score, c.final_score) for c in given]
    result = apply_rules(rules, given, TABLE, Filters(), ["drill"])
    assert ids(result) == ["P2", "P1", "P3", "P0"]
    assert [(c.row, c.fused_score, c.final_score) for c in given] == before
    assert sorted((c.row, c.fused_score) for c in result.candidates) == sorted(
        (r, s) for r, s, _ in before
    )


def test_boost_on_an_attribute_the_catalog_lacks_is_skipped() -> None:
    rules = book({"when": ANY, "action": "boost", "match": {"attributes": {"size": ["xl"]}}})
    result = run(rules, [3, 2, 1])
    assert ids(result) == ["P3", "P2", "P1"]
    assert "boost skipped" in result.outcomes[0] and "size" in result.outcomes[0]


@pytest.mark.parametrize(
    ("when", "query", "matches"),
    [
        ({"query": "Cordless  Drill"}, " cordless drill ", True),  # normalized both sides
        ({"query": "cordless drill"}, "drill", False),  # exact, not a substring
        ({"query": ["saw", "drill"]}, "DRILL", True),
        ({"any": True}, "anything at all", True),
        ({"contains": "paint"}, "white paint gallon", True),
        ({"contains": "paint"}, "paintbrush", False),  # whole words only
        ({"contains": "wall paint"}, "white wall paint", True),
        ({"query": ["white paint", "paint"], "contains": "white"}, "paint", False),
        ({"any": True, "contains": "drill"}, "saw", False),
    ],
)
def test_when_matches_normalized_queries(when: dict[str, Any], query: str, matches: bool) -> None:
    rules = book({"when": when, "action": "hide", "products": ["P1"]})
    assert ("P1" not in ids(run(rules, [1, 2], query=query))) is matches


def test_a_rule_matches_the_rewritten_text_too() -> None:
    rules = book({"when": {"query": "drill"}, "action": "hide", "products": ["P1"]})
    result = apply_rules(rules, candidates(1, 2), TABLE, Filters(), ["dril", "drill"])
    assert ids(result) == ["P2"]


@pytest.mark.parametrize(
    ("rule", "loc", "says"),
    [
        (
            {"when": ANY, "action": "pin", "product": "P1", "position": 0},
            ("rules", 1, "pin", "position"),
            "greater than or equal to 1",
        ),
        (
            {"when": ANY, "action": "pin", "product": "P1", "position": "2"},
            ("rules", 1, "pin", "position"),
            "must be a JSON number",
        ),
        (
            {"when": ANY, "action": "pin", "product": "P1", "postion": 2},
            ("rules", 1, "pin", "postion"),
            "Extra inputs",
        ),
        ({"when": {}, "action": "hide", "products": ["P1"]}, ("rules", 1, "hide", "when"), "say"),
        (
            {"when": {"any": True, "query": "x"}, "action": "hide", "products": ["P1"]},
            ("rules", 1, "hide", "when", "any", "query"),
            "Extra inputs",
        ),
        (
            {"when": ANY, "action": "hide", "products": []},
            ("rules", 1, "hide", "products"),
            "at least 1",
        ),
        (
            {"when": ANY, "action": "boost", "match": {}},
            ("rules", 1, "boost", "match"),
            "match nothing",
        ),
        (
            {"when": ANY, "action": "bury", "match": {"in_stock": None}},
            ("rules", 1, "bury", "match", "in_stock"),
            "leave the field out",
        ),
        ({"when": ANY, "action": "promote"}, ("rules", 1), "does not match any of the expected"),
    ],
)
def test_validation_names_the_rule_index_and_field(
    rule: dict[str, Any], loc: tuple[Any, ...], says: str
) -> None:
    good = {"when": ANY, "action": "hide", "products": ["P1"]}
    with pytest.raises(ValidationError) as caught:
        RuleSet.model_validate({"rules": [good, rule]})
    errors = {e["loc"]: e["msg"] for e in caught.value.errors()}
    assert all(at[:2] == ("rules", 1) for at in errors)  # the good rule 0 is never blamed
    assert says in errors[loc]


def test_describe_change_lists_rules_added_and_removed() -> None:
    pin = {"name": "hero", "when": ANY, "action": "pin", "product": "P1", "position": 1}
    hide = {"when": ANY, "action": "hide", "products": ["P2"]}
    old = RuleSet.model_validate({"rules": [pin, hide]})
    new = RuleSet.model_validate({"rules": [hide, {**pin, "position": 2}]})
    change = describe_change(old, new)
    assert change["rules_before"] == change["rules_after"] == 2
    assert change["added"] == ["'hero' pin P1 at 2"]
    assert change["removed"] == ["'hero' pin P1 at 1"]
    assert describe_change(new, new)["added"] == []


# -- the store: versions and the audit log -----------------------------------------------


def test_store_versions_audit_and_another_readers_view(tmp_path: Path) -> None:
    store = RulesStore(tmp_path / "merch", Rulebook.parse)
    empty = store.current()
    assert empty.version == 0 and empty.value.ruleset.rules == []
    assert not (tmp_path / "merch").exists()  # reading creates nothing

    doc = {"rules": [{"when": ANY, "action": "hide", "products": ["P1"]}]}
    first = store.put(doc, actor="alice", index_version="snap-1")
    second = store.put({"rules": []}, actor="bob")
    assert (first.version, second.version, second.previous) == (1, 2, 1)

    other = RulesStore(tmp_path / "merch", Rulebook.parse)  # e.g. the server's, another process
    assert other.current().version == 2
    assert other.get(1).document == doc and other.get(1).actor == "alice"
    with pytest.raises(RulesError, match="does not exist"):
        other.get(3)

    lines = [json.loads(x) for x in (tmp_path / "merch" / AUDIT_LOG).read_text().splitlines()]
    assert [(e["version"], e["previous"], e["actor"]) for e in lines] == [
        (1, 0, "alice"),
        (2, 1, "bob"),
    ]
    at = datetime.fromisoformat(lines[0]["at"])
    assert timedelta(0) <= datetime.now(UTC) - at < timedelta(minutes=5)
    assert lines[0]["index_version"] == "snap-1"
    assert [e["version"] for e in store.history(limit=1)] == [2]  # newest first


def test_store_rejects_a_bad_document_and_a_forged_actor_writing_nothing(tmp_path: Path) -> None:
    store = RulesStore(tmp_path, Rulebook.parse)
    with pytest.raises(ValidationError):
        store.put({"rules": [{"when": ANY, "action": "pin", "product": "P1"}]}, actor="a")
    with pytest.raises(ValueError, match="actor"):
        store.put({"rules": []}, actor="eve\nforged line")
    assert store.current().version == 0 and store.history() == []
    assert not list(tmp_path.glob("v*.json"))


def test_store_keeps_serving_the_last_good_version_when_one_is_damaged(tmp_path: Path) -> None:
    store = RulesStore(tmp_path, Rulebook.parse)
    store.put({"rules": [{"when": ANY, "action": "hide", "products": ["P1"]}]}, actor="a")
    assert store.current().version == 1
    (tmp_path / "v000002.json").write_text("{not json")
    (tmp_path / "CURRENT").write_text("2\n")
    assert store.current().version == 1  # logged, not raised: searches keep their rules
    with pytest.raises(RulesError):
        RulesStore(tmp_path, Rulebook.parse).current()  # nothing good to fall back to
    assert store.put({"rules": []}, actor="a").version == 3  # a new version repairs it


def test_concurrent_writers_get_distinct_versions(tmp_path: Path) -> None:
    store = RulesStore(tmp_path, Rulebook.parse)
    versions: list[int] = []

    def write(k: int) -> None:
        doc = {"rules": [{"when": ANY, "action": "hide", "products": [f"P{k}"]}]}
        versions.append(store.put(doc, actor=f"w{k}").version)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(versions) == list(range(1, 9))
    assert len(store.history(limit=100)) == 8


# -- end to end: the real app on the sample catalog --------------------------------------

TOKEN = "merch-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
QUERY = "cordless drill"
PAINT = "SKU-10262"  # a Behr interior paint: no leg retrieves it for a drill query
BOSCH = "SKU-10011"  # a Bosch drill/driver kit


@pytest.fixture(scope="module")
def merch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("merch")


@pytest.fixture(scope="module")
def client(sample_index: Path, encoder: Encoder, merch_dir: Path) -> Iterator[TestClient]:
    """The app over the sample snapshot (read-only), its rules in a directory of its own,
    with the result cache on."""
    settings = Settings(
        index_dir=sample_index,
        merch_dir=merch_dir,
        reload_interval_s=0,
        admin_token=SecretStr(TOKEN),
        result_cache_size=64,
    )
    svc = SearchService(settings, encoder=encoder)
    svc.load()
    with TestClient(create_app(settings, service=svc)) as c:
        yield c


def put_rules(client: TestClient, *rules: dict[str, Any], actor: str = "tester") -> int:
    r = client.put(
        "/v1/admin/rules",
        json={"rules": list(rules)},
        headers={**AUTH, "X-Shopsearch-Actor": actor},
    )
    assert r.status_code == 200, r.text
    version: int = r.json()["version"]
    return version


def search(client: TestClient, **body: Any) -> dict[str, Any]:
    r = client.post("/v1/search", json={"q": QUERY, "size": 20, **body})
    assert r.status_code == 200, r.text
    answer: dict[str, Any] = r.json()
    return answer


def hit_ids(answer: dict[str, Any]) -> list[str]:
    return [h["id"] for h in answer["hits"]]


PIN_PAINT = {"name": "paint promo", "when": {"query": QUERY}, "action": "pin"}


def test_pinned_products_appear_at_their_positions(client: TestClient) -> None:
    put_rules(client)
    plain = search(client)
    assert PAINT not in hit_ids(plain) and BOSCH in hit_ids(plain)

    version = put_rules(
        client,
        {**PIN_PAINT, "product": PAINT, "position": 1},
        {"when": {"query": QUERY}, "action": "pin", "product": BOSCH, "position": 3},
    )
    answer = search(client, explain=True)
    ids = hit_ids(answer)
    assert ids[0] == PAINT and ids[2] == BOSCH
    assert answer["rules_version"] == version
    assert answer["total"] == plain["total"] + 1  # the paint was inserted
    first = answer["hits"][0]["explain"]
    assert first["merch"] == [
        "pinned at 1 by rule 0 'paint promo' (asked for 1; inserted: no leg retrieved it)"
    ]
    assert answer["hits"][2]["explain"]["merch"] == ["pinned at 3 by rule 1 (asked for 3)"]
    assert "explain" not in search(client)["hits"][0]  # explain stays off by default
    # other queries are untouched
    assert PAINT not in hit_ids(search(client, q="drill"))


def test_a_pinned_product_the_filters_exclude_is_not_shown(client: TestClient) -> None:
    put_rules(client, {**PIN_PAINT, "product": PAINT, "position": 1})
    answer = search(client, filters={"category": "Tools"}, size=100, explain=True)
    assert PAINT not in hit_ids(answer)
    assert answer["hits"][0]["id"] != PAINT
    assert answer["merch"] == [
        f"rule 0 'paint promo': pin {PAINT} at 1: not shown (excluded by the request's filters)"
    ]
    # ... and shown again when the filters let it through
    assert hit_ids(search(client, filters={"category": "Paint & Supplies"}))[0] == PAINT


def test_hidden_products_are_not_shown_nor_counted_in_facets(client: TestClient) -> None:
    put_rules(client)
    plain = search(client)
    dewalt = [h["id"] for h in plain["hits"] if h["brand"] == "DeWalt"]
    assert dewalt
    put_rules(client, {"when": {"contains": "drill"}, "action": "hide", "products": dewalt})
    answer = search(client)
    assert not set(dewalt) & set(hit_ids(answer))
    assert answer["total"] == plain["total"] - len(dewalt)

    def brand_count(a: dict[str, Any]) -> int:
        return sum(b["count"] for b in a["facets"]["brand"] if b["value"].lower() == "dewalt")

    assert brand_count(answer) == brand_count(plain) - len(dewalt)


def test_bury_out_of_stock_over_http(client: TestClient) -> None:
    put_rules(client, {"when": {"any": True}, "action": "bury", "match": {"in_stock": False}})
    answer = search(client, size=100)
    stock = [h.get("in_stock") for h in answer["hits"]]
    assert False in stock
    first_out = stock.index(False)
    assert all(s is False for s in stock[first_out:])  # every out-of-stock hit is last


def test_rules_change_is_never_answered_from_the_result_cache(client: TestClient) -> None:
    put_rules(client)
    search(client)
    again = search(client)
    assert again["cached"] is True  # the cache is on and answers repeats
    version = put_rules(client, {**PIN_PAINT, "product": PAINT, "position": 1})
    fresh = search(client)
    assert fresh["cached"] is False and fresh["rules_version"] == version
    assert hit_ids(fresh)[0] == PAINT
    assert search(client)["cached"] is True  # and the new answer is cached in turn


def test_admin_api_reads_history_and_audits_who_and_when(
    client: TestClient, merch_dir: Path
) -> None:
    version = put_rules(client, {**PIN_PAINT, "product": PAINT, "position": 2}, actor="maria")
    got = client.get("/v1/admin/rules", headers=AUTH).json()
    assert got["version"] == version and got["actor"] == "maria"
    assert got["rules"][0]["product"] == PAINT and got["index_version"]
    older = client.get("/v1/admin/rules", params={"version": version - 1}, headers=AUTH)
    assert older.status_code == 200 and older.json()["version"] == version - 1
    missing = client.get("/v1/admin/rules", params={"version": version + 100}, headers=AUTH)
    assert missing.status_code == 404

    history = client.get("/v1/admin/rules/history", params={"limit": 2}, headers=AUTH).json()
    assert [e["version"] for e in history] == [version, version - 1]
    newest = history[0]
    assert newest["actor"] == "maria"
    assert datetime.now(UTC) - datetime.fromisoformat(newest["at"]) < timedelta(minutes=5)
    assert newest["change"]["added"] == [f"'paint promo' pin {PAINT} at 2"]
    audit = (merch_dir / AUDIT_LOG).read_text()
    assert json.loads(audit.splitlines()[-1])["actor"] == "maria"
    assert TOKEN not in audit  # never the token
    # no actor header: "admin"
    r = client.put("/v1/admin/rules", json={"rules": []}, headers=AUTH)
    assert r.status_code == 200
    assert client.get("/v1/admin/rules", headers=AUTH).json()["actor"] == "admin"


def test_put_warns_about_products_the_catalog_lacks(client: TestClient) -> None:
    r = client.put(
        "/v1/admin/rules",
        json={
            "rules": [{"when": {"any": True}, "action": "pin", "product": "NOPE", "position": 1}]
        },
        headers=AUTH,
    )
    assert r.status_code == 200
    assert r.json()["warnings"] == ["rules[0]: product 'NOPE' is not in the catalog"]


def test_bad_rules_are_a_422_naming_the_rule_and_field(client: TestClient) -> None:
    before = client.get("/v1/admin/rules", headers=AUTH).json()["version"]
    r = client.put(
        "/v1/admin/rules",
        json={
            "rules": [
                {"when": {"any": True}, "action": "hide", "products": ["P1"]},
                {"when": {"any": True}, "action": "pin", "product": PAINT, "position": 0},
            ]
        },
        headers=AUTH,
    )
    assert r.status_code == 422
    assert [e["loc"] for e in r.json()["detail"]] == [["body", "rules", 1, "pin", "position"]]
    assert client.get("/v1/admin/rules", headers=AUTH).json()["version"] == before


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_rules_endpoints_need_the_admin_token(client: TestClient, headers: dict[str, str]) -> None:
    before = client.get("/v1/admin/rules", headers=AUTH).json()["version"]
    assert client.put("/v1/admin/rules", json={"rules": []}, headers=headers).status_code == 401
    assert client.get("/v1/admin/rules", headers=headers).status_code == 401
    assert client.get("/v1/admin/rules/history", headers=headers).status_code == 401
    assert client.get("/v1/admin/rules", headers=AUTH).json()["version"] == before


def test_cli_applies_a_rule_file_that_the_running_server_serves(
    client: TestClient,
    merch_dir: Path,
    sample_index: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SHOPSEARCH_MERCH_DIR", str(merch_dir))
    runner = CliRunner()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rules": [{"when": {"any": True}, "action": "pin"}]}))
    result = runner.invoke(cli_app, ["rules", "apply", str(bad), "--index-dir", str(sample_index)])
    assert result.exit_code == 2
    assert "rules[0].pin.product" in result.output and "position" in result.output

    good = tmp_path / "rules.json"
    good.write_text(
        json.dumps(
            {
                "rules": [
                    {"when": {"query": QUERY}, "action": "pin", "product": BOSCH, "position": 1}
                ]
            }
        )
    )
    args = ["--index-dir", str(sample_index)]
    result = runner.invoke(cli_app, ["rules", "apply", str(good), *args, "--actor", "cli-user"])
    assert result.exit_code == 0, result.output
    answer = search(client)  # the server sees the new version at its next search
    assert hit_ids(answer)[0] == BOSCH

    shown = runner.invoke(cli_app, ["rules", "show", *args])
    assert shown.exit_code == 0, shown.output
    assert f"rules version {answer['rules_version']}, by cli-user" in shown.stderr
    assert json.loads(shown.stdout) == json.loads(good.read_text())  # a file apply takes back
    history = runner.invoke(cli_app, ["rules", "history", *args, "--limit", "3"])
    assert history.exit_code == 0 and "cli-user" in history.stdout
