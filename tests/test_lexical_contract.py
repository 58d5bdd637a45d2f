"""The ``LexicalIndex`` contract, run on every backend: tantivy and a real Elasticsearch node,
the latter with the engine's analysis (``en_stem``, its default) and with the cluster's own
``standard`` analyzer.

The Elasticsearch half needs the node that ``make test`` starts (``.ci/elasticsearch.sh
start``; URL from ``SHOPSEARCH_ES_URL``, default ``http://127.0.0.1:9201``). Without one
those tests are skipped, except under ``CI=true`` where they fail.

The catalog is hand-made so every expectation can be checked by reading it: queries use
words in the exact form the products have, so they hold under tantivy's English stemmer
and under the ``standard`` analyzer of the test distribution alike.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.lexical_index import LexicalIndex, TantivyIndex, filters_hold
from shopsearch.retrieval.types import Product

#: Every description ends with this, so the query "hardware" matches every product and a
#: filtered search for it must return exactly the products that pass the filter.
EVERYWHERE = "hardware"


def _p(
    pid: str,
    title: str,
    brand: str,
    category: str,
    price: float | None,
    in_stock: bool | None,
    description: str,
    **attributes: str,
) -> Product:
    return Product(
        id=pid,
        title=title,
        brand=brand,
        category=category,
        price=price,
        in_stock=in_stock,
        description=f"{description} Sold in our {EVERYWHERE} store.",
        attributes=attributes,
    )


CATALOG: tuple[Product, ...] = (
    _p("1", "Cordless Drill Driver 20V", "DeWalt", "Tools > Power Tools > Drills", 129.0, True,
       "Compact cordless drill with two batteries.", color="Yellow"),
    _p("2", "Hammer Drill 18V", "Makita", "Tools > Power Tools > Drills", 159.0, True,
       "Hammer drill for masonry.", color="Teal"),
    _p("3", "Right Angle Drill", "Milwaukee", "Tools > Power Tools > Drills", 199.0, False,
       "Drill for tight spaces.", color="Red"),
    _p("4", "Drill Bit Set 29 Piece", "Bosch", "Tools > Power Tools Accessories > Drill Bits",
       24.99, True, "Cobalt bits for metal.", material="Cobalt"),
    _p("5", "Claw Hammer 16 oz", "Estwing", "Tools > Hand Tools > Hammers", 29.0, True,
       "Forged steel claw hammer.", material="Steel"),
    _p("6", "Framing Hammer 22 oz", "Stanley", "Tools > Hand Tools > Hammers", 34.5, None,
       "Fiberglass handle framing hammer.", material="Fiberglass"),
    _p("7", "Rubber Mallet", "Stanley", "Tools > Hand Tools > Hammers", 12.0, True,
       "Soft face mallet.", material="Rubber"),
    _p("8", "Circular Saw 7-1/4 in.", "DeWalt", "Tools > Power Tools > Saws", 149.0, True,
       "Corded circular saw.", color="Yellow"),
    _p("9", "Hand Saw 15 in.", "Stanley", "Tools > Hand Tools > Saws", 19.99, False,
       "Sharp tooth hand saw."),
    _p("10", "Interior Paint Eggshell White 1 gal", "Behr", "Paint > Interior Paint", 38.0, True,
       "Washable interior paint.", color="White", finish="Eggshell"),
    _p("11", "Exterior Paint Satin Gray 1 gal", "Behr", "Paint > Exterior Paint", 42.0, True,
       "Weatherproof exterior paint.", color="Gray", finish="Satin"),
    _p("12", "Paint Roller Kit 9 in.", "Wooster", "Paint > Paint Tools > Rollers", 14.97, True,
       "Roller frame, tray and covers."),
    _p("13", "Angled Paint Brush 2 in.", "Purdy", "Paint > Paint Tools > Brushes", 11.49, True,
       "Angled sash brush."),
    _p("14", "LED Light Bulb 60W Equivalent 4 Pack", "Philips", "Lighting > Light Bulbs", 9.97,
       True, "Soft white LED bulb.", color="Soft White"),
    _p("15", "Outdoor Wall Lantern Black", "Hampton Bay", "Lighting > Outdoor Lighting", 59.0,
       False, "Wall mounted lantern.", color="Black"),
    _p("16", "Pendant Light Brushed Nickel", "Hampton Bay",
       "Lighting > Indoor Lighting > Pendants", 89.0, True, "Kitchen island pendant.",
       color="Nickel"),
    _p("17", "Garden Hose 50 ft", "Flexzilla", "Outdoors > Garden > Watering", 39.99, True,
       "Kink free garden hose.", color="Green"),
    _p("18", "Lawn Mower Self Propelled", "Honda", "Outdoors > Lawn Care > Mowers", 499.0, True,
       "Gas lawn mower."),
    _p("19", "Leaf Blower Cordless 40V", "EGO", "Outdoors > Lawn Care > Blowers", 179.0, None,
       "Cordless leaf blower.", color="Black"),
    _p("20", "Toilet Flapper Universal", "Korky", "Plumbing > Toilet Parts", None, True,
       "Universal toilet flapper."),
)  # fmt: skip

BY_ID = {p.id: p for p in CATALOG}

#: (query, ids that must fill the first len(ids) places, in any order)
EXPECTED_FIRST = [
    ("cordless drill", {"1"}),
    ("makita", {"2"}),
    ("claw hammer", {"5"}),
    ("paint roller", {"12"}),
    ("pendant light", {"16"}),
    ("garden hose", {"17"}),
    ("toilet flapper", {"20"}),
    ("hampton bay", {"15", "16"}),
    ("lawn mower", {"18"}),
]

FILTERS = [
    Filters(brand=("dewalt",)),
    Filters(brand=("STANLEY", "Behr")),
    Filters(category="Tools > Power Tools"),  # not "Tools > Power Tools Accessories"
    Filters(category="tools > hand tools > hammers"),
    Filters(category="Lighting"),
    Filters(price_min=20.0, price_max=60.0),
    Filters(price_max=15.0),  # the product without a price never passes a price filter
    Filters(price_min=100.0),
    Filters(in_stock=True),
    Filters(in_stock=False),  # unknown stock (None) is neither in stock nor out of stock
    Filters(attributes={"color": ("yellow", "BLACK")}),
    Filters(attributes={"color": ("soft white",)}),
    Filters(attributes={"finish": ("satin",)}, category="Paint"),
    Filters(brand=("dewalt",), price_max=140.0, in_stock=True),
    Filters(brand=("no such brand",)),
]


MakeIndex = Callable[[], LexicalIndex]

BACKENDS = [
    "tantivy",
    pytest.param("elasticsearch", marks=pytest.mark.elasticsearch),
    pytest.param("elasticsearch-standard", marks=pytest.mark.elasticsearch),
]


def _es_analyzer(backend: str) -> str:
    """The ``analyzer`` option of an Elasticsearch backend parameter."""
    return "standard" if backend == "elasticsearch-standard" else "auto"


@pytest.fixture(params=BACKENDS)
def make_index(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MakeIndex]:
    """A factory of new, empty indexes of the parametrized backend (deleted afterwards)."""
    made: list[str] = []
    client = request.getfixturevalue("es_client") if request.param != "tantivy" else None

    def make() -> LexicalIndex:
        if client is None:
            return TantivyIndex(tmp_path_factory.mktemp("tantivy"))
        from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

        name = f"test-contract-{uuid.uuid4().hex[:10]}"
        made.append(name)
        return ElasticsearchIndex(
            name, client=client, timeout=5.0, analyzer=_es_analyzer(request.param)
        )

    yield make
    if client is not None:
        for name in made:
            client.indices.delete(index=name, ignore_unavailable=True)


@pytest.fixture(scope="module", params=BACKENDS)
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LexicalIndex]:
    """One index per backend holding CATALOG, shared by the read-only tests."""
    if request.param == "tantivy":
        index: LexicalIndex = TantivyIndex(tmp_path_factory.mktemp("tantivy-built"))
        index.build(CATALOG)
        yield index
        return
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

    client = request.getfixturevalue("es_client")
    name = f"test-contract-built-{uuid.uuid4().hex[:10]}"
    index = ElasticsearchIndex(
        name, client=client, timeout=5.0, analyzer=_es_analyzer(request.param)
    )
    index.build(CATALOG)
    yield index
    client.indices.delete(index=name, ignore_unavailable=True)


def ids(hits: list[Any]) -> list[str]:
    return [h.id for h in hits]


# -- build and count -----------------------------------------------------------------------


def test_build_counts_every_product_and_reports_progress(make_index: MakeIndex) -> None:
    index = make_index()
    seen: list[int] = []
    index.build(iter(CATALOG), progress=seen.append)
    assert index.count() == len(CATALOG)
    assert sum(seen) == len(CATALOG)


def test_rebuild_replaces_the_whole_content(make_index: MakeIndex) -> None:
    index = make_index()
    index.build(CATALOG)
    index.build(CATALOG[:5])
    assert index.count() == 5
    assert "20" not in ids(index.search("toilet flapper", 10))


def test_describe_names_backend_analyzer_and_boosts(built: LexicalIndex) -> None:
    info = built.describe()
    assert info["backend"] == built.backend
    assert isinstance(info["analyzer"], str) and info["analyzer"]
    assert info["field_boosts"] == {"title": 2.0, "brand": 1.5, "category": 1.0, "description": 0.5}


# -- search --------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "first"), EXPECTED_FIRST, ids=[q for q, _ in EXPECTED_FIRST])
def test_search_ranks_the_obvious_products_first(
    built: LexicalIndex, query: str, first: set[str]
) -> None:
    hits = built.search(query, 10)
    assert set(ids(hits)[: len(first)]) == first, [(h.id, BY_ID[h.id].title) for h in hits]


def test_search_results_are_best_first_unique_and_at_most_k(built: LexicalIndex) -> None:
    hits = built.search("drill hammer saw", 5)
    assert len(hits) == 5
    assert len(set(ids(hits))) == 5
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all(s > 0 for s in scores)


def test_search_edge_cases(built: LexicalIndex) -> None:
    assert built.search("drill", 0) == []
    assert built.search("   ", 10) == []
    assert built.search("zzzxqy", 10) == []
    # Query syntax characters are text, never an error.
    assert "8" in ids(built.search('circular saw 7-1/4 in. (corded) "blade', 10))
    assert len(built.search(EVERYWHERE, 100)) == len(CATALOG)


@pytest.mark.parametrize("filters", FILTERS, ids=[str(i) for i in range(len(FILTERS))])
def test_filters_never_leak_and_never_over_filter(built: LexicalIndex, filters: Filters) -> None:
    hits = built.search(EVERYWHERE, 100, filters=filters)
    leaked = [h.id for h in hits if not filters_hold(BY_ID[h.id], filters)]
    assert leaked == [], f"products that fail {filters}: {leaked}"
    # The query matches every product, so the result is exactly the products that pass.
    assert set(ids(hits)) == {p.id for p in CATALOG if filters_hold(p, filters)}


@pytest.mark.parametrize("filters", FILTERS[:6], ids=[str(i) for i in range(6)])
def test_filtered_search_ranks_like_the_unfiltered_one(
    built: LexicalIndex, filters: Filters
) -> None:
    """Filters restrict; they do not change the order of what is left."""
    everything = built.search("drill hammer paint light", 100)
    passing = [h.id for h in everything if filters_hold(BY_ID[h.id], filters)]
    filtered = ids(built.search("drill hammer paint light", 100, filters=filters))
    assert filtered == passing


# -- incremental updates -------------------------------------------------------------------


def test_upsert_replaces_a_product_and_adds_a_new_one(make_index: MakeIndex) -> None:
    index = make_index()
    index.build(CATALOG)
    changed = Product(
        id="20",
        title="Wax Ring Kit",
        brand="Korky",
        category="Plumbing > Toilet Parts",
        price=5.0,
        in_stock=False,
    )
    added = Product(id="21", title="Copper Pipe 10 ft", brand="Mueller", category="Plumbing > Pipe")
    index.upsert([changed, added])
    assert index.count() == len(CATALOG) + 1
    assert ids(index.search("wax ring", 5))[:1] == ["20"]
    assert "20" not in ids(index.search("flapper", 10))
    assert ids(index.search("copper pipe", 5))[:1] == ["21"]
    # The filter fields follow the new version too.
    assert "20" in ids(index.search("wax", 10, filters=Filters(in_stock=False, price_max=5.0)))
    assert "20" not in ids(index.search("wax", 10, filters=Filters(in_stock=True)))
    index.upsert([])  # nothing to do is not an error


def test_delete_removes_products_and_ignores_unknown_ids(make_index: MakeIndex) -> None:
    index = make_index()
    index.build(CATALOG)
    index.delete(["17", "no-such-id"])
    assert index.count() == len(CATALOG) - 1
    assert "17" not in ids(index.search("garden hose", 10))
    assert "17" not in ids(index.search(EVERYWHERE, 100))
    index.delete([])


# -- parity --------------------------------------------------------------------------------


#: Queries whose words differ from the catalog's only by inflection ("drills", "Hammers",
#: "painting"), which only stemming matches, and words without any term ("!!").
STEMMED_QUERIES = ["drills", "Hammers", "painting rollers", "mowers", "lanterns", "!! ??"]
#: Words that analyse to several terms are phrases to tantivy's query parser ("3/4-in."
#: must hold 3, 4 and in, in that order), as are quoted groups.
PARSED_QUERIES = ["3/4-in. drill (20V)", "7-1/4 in. saw", '"claw hammer"', '"hammer claw" steel']


@pytest.mark.elasticsearch
def test_elasticsearch_top5_agrees_with_tantivy(es_client: Any, tmp_path: Path) -> None:
    """On queries without stemming differences, both engines find the same top 5."""
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

    reference = TantivyIndex(tmp_path / "tantivy")
    reference.build(CATALOG)
    name = f"test-contract-parity-{uuid.uuid4().hex[:10]}"
    other = ElasticsearchIndex(name, client=es_client, timeout=5.0, analyzer="standard")
    try:
        other.build(CATALOG)
        queries = [q for q, _ in EXPECTED_FIRST] + ["drill", "paint", "black", "cordless"]
        overlaps = []
        for q in queries:
            a, b = ids(reference.search(q, 5)), ids(other.search(q, 5))
            overlaps.append(len(set(a) & set(b)) / max(1, min(5, len(a), len(b))))
        assert sum(overlaps) / len(overlaps) >= 0.9, list(zip(queries, overlaps, strict=True))
    finally:
        es_client.indices.delete(index=name, ignore_unavailable=True)


@pytest.mark.elasticsearch
def test_with_the_engines_analysis_elasticsearch_answers_as_tantivy(
    es_client: Any, tmp_path: Path
) -> None:
    """The default analyzer (``en_stem``, run by the engine) gives the cluster tantivy's
    terms: stemmed queries match, and every query finds the same products, in the same
    order, with BM25 scores within the engines' length-norm rounding; match sets too."""
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchIndex

    reference = TantivyIndex(tmp_path / "tantivy")
    reference.build(CATALOG)
    name = f"test-contract-engine-{uuid.uuid4().hex[:10]}"
    other = ElasticsearchIndex(name, client=es_client, timeout=5.0)
    everyone = [p.id for p in CATALOG]
    try:
        other.build(CATALOG)
        assert other.describe()["analyzer"] == "en_stem"
        queries = [q for q, _ in EXPECTED_FIRST] + STEMMED_QUERIES + PARSED_QUERIES
        for q in queries:
            a, b = reference.search(q, 10), other.search(q, 10)
            assert ids(a) == ids(b), q
            for x, y in zip(a, b, strict=True):
                assert y.score == pytest.approx(x.score, rel=0.05), (q, x, y)
            assert reference.match_set(q, everyone) == other.match_set(q, everyone), q
        assert ids(other.search("drills", 10)) and ids(other.search("!! ??", 10)) == []
        facets = other.facets("Hammers", fields=("brand", "category"))
        assert facets.total == 4  # three hammers and the hammer drill
        assert ("Tools > Hand Tools > Hammers", 3) in facets.terms["category"]
        assert other.facets("!! ??").total == 0 and other.facets(None).total == len(CATALOG)
    finally:
        es_client.indices.delete(index=name, ignore_unavailable=True)


# -- result sets: which products match (retrieval/match_set.py) ----------------------------


def test_match_set_needs_both_words_of_a_two_word_query(built: LexicalIndex) -> None:
    everyone = [p.id for p in CATALOG]
    found = built.match_set("cordless drill", everyone)
    # Only product 1 holds both words; "Hammer Drill" and the drill bits hold one.
    assert found.ids == {"1"} and found.total == 1
    drills = built.match_set("drill", everyone)
    assert drills.ids == {"1", "2", "3", "4"} and drills.total == 4
    # Asked about some products, it answers for those; the total still counts them all.
    assert built.match_set("drill", ["2", "5"]) == type(drills)(ids=frozenset({"2"}), total=4)


def test_match_set_of_a_longer_query_needs_half_of_its_words(built: LexicalIndex) -> None:
    everyone = [p.id for p in CATALOG]
    # Three words: two of them are enough ("hammer" + "drill": 2; "claw" + "hammer": 5).
    found = built.match_set("claw hammer drill", everyone)
    assert found.ids == {"2", "5"} and found.total == 2


def test_match_set_applies_filters_and_knows_no_words(built: LexicalIndex) -> None:
    everyone = [p.id for p in CATALOG]
    found = built.match_set("drill", everyone, filters=Filters(in_stock=True))
    assert found.ids == {"1", "2", "4"} and found.total == 3
    assert built.match_set("zzzz qqqq", everyone).total == 0
    assert built.match_set("", everyone).ids == frozenset()
