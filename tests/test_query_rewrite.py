"""Query rewriting: the spelling and unit rules, and the sample_service searching the rewritten text."""

from __future__ import annotations

from pathlib import Path

import pytest

from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.catalog import CatalogReport
from shopsearch.indexer.judgments import EvalDataset, JudgedQuery
from shopsearch.indexer.snapshot_build import BuildOptions, build_snapshot
from shopsearch.indexer.training.inputs import TrainingInputs, rewrite_splits
from shopsearch.retrieval.encoders import Encoder, default_model_path
from shopsearch.retrieval.query_rewrite import QueryRewriter, UnitNormalizer
from shopsearch.retrieval.spelling import SpellCorrector
from shopsearch.retrieval.types import Product, RewriteChange

COUNTS = {
    "toilet": 40,
    "seat": 30,
    "cordless": 25,
    "drill": 50,
    "drills": 8,
    "garden": 20,
    "hose": 20,
    "framed": 10,
    "mirror": 10,
    "sectional": 4,
    "milwaukee": 12,
    "rare": 1,  # one product's word: known, but never a correction target
    "rarely": 1,
}


def corrector(**kwargs: object) -> SpellCorrector:
    return SpellCorrector(COUNTS, **kwargs)  # type: ignore[arg-type]


def test_unknown_words_become_catalog_words_and_the_rest_stays_as_typed() -> None:
    fixed = corrector().correct("Toliet  seat, 3/4 in. (milwakee)")
    assert fixed.text == "toilet  seat, 3/4 in. (milwaukee)"
    assert fixed.changes == (
        RewriteChange("Toliet", "toilet", "spelling"),
        RewriteChange("milwakee", "milwaukee", "spelling"),
    )
    assert fixed.changed


def test_run_together_words_are_split() -> None:
    assert corrector().correct("gardenhose").text == "garden hose"


def test_known_short_numeric_and_stemmed_words_are_left_alone() -> None:
    c = corrector()
    for query in ("drill", "drl", "m18 2x4", "sectionals", "rarely"):
        # "drl" is shorter than MIN_WORD_CHARS; "sectionals" stems to "sectional".
        assert not c.correct(query).changed, query
    assert corrector(known_words=["drillz"]).correct("drillz").changes == ()
    assert corrector().correct("drillz").text == "drill"  # one edit: the most used wins


def test_two_edits_only_for_long_words_and_trims_are_refused() -> None:
    c = corrector()
    assert c.correct("toilett").text == "toilet"  # one edit
    assert c.correct("cordlss").text == "cordless"  # one edit (a deletion)
    assert c.correct("tiolte").text == "toilet"  # two edits, six letters
    assert not c.correct("sete").changed  # "seat" is two edits away: too far for 4 letters
    assert not c.correct("unframed").changed  # "framed" is a different word inside it


def test_rare_words_are_not_targets_and_min_count_is_validated() -> None:
    assert not corrector().correct("rarr").changed
    assert corrector(min_count=1).correct("rarre").text == "rare"
    with pytest.raises(ValueError, match="min_count"):
        corrector(min_count=0)


def test_add_known_protects_new_words() -> None:
    c = corrector()
    assert c.correct("toilets").changed is False  # stem of a catalog word
    assert c.correct("toilex").text == "toilet"
    c.add_known(["Toilex Flush Valve"])
    assert not c.correct("toilex").changed
    assert c.vocabulary_size == len(COUNTS) + 3


def units(counts: dict[str, int] | None = None) -> UnitNormalizer:
    table = counts if counts is not None else {"in": 100, "inch": 3, "ft": 50, "volt": 9, "v": 2}
    return UnitNormalizer(lambda w: table.get(w, 0))


def test_units_are_split_from_numbers_and_spelled_the_catalogs_way() -> None:
    u = units()
    assert u.normalize("sink 18inches wide").text == "sink 18 in wide"
    assert u.normalize('20" fan, 1/2in pipe 10ft.').text == "20 in fan, 1/2 in pipe 10 ft"
    assert u.normalize("milwaukee 18volt 4 foot level").text == "milwaukee 18 volt 4 ft level"
    assert u.normalize("2x4x8 stud 20X20 filter").text == "2 x 4 x 8 stud 20 x 20 filter"
    assert u.normalize("1 gallon").changes == (RewriteChange("1 gallon", "1 gal", "units"),)


def test_units_without_a_number_and_the_catalogs_own_spelling_are_left_alone() -> None:
    u = units()
    for query in ("foot stool", "plug in timer", "2 in. x 4 in.", "m18 fuel", "60w bulb"):
        rewrite = u.normalize(query)
        assert rewrite.text == query and not rewrite.changed, query
    # A catalog that writes "inch" gets "inch".
    assert units({"inch": 10, "in": 2}).normalize("24in vanity").text == "24 inch vanity"


def test_the_rewriter_runs_units_then_spelling() -> None:
    rewriter = QueryRewriter(SpellCorrector(COUNTS))
    done = rewriter.rewrite("toliet 12inch seat")
    assert done.text == "toilet 12 in seat"
    assert [c.reason for c in done.changes] == ["units", "spelling"]
    assert rewriter.rewrite("toliet 12inch", units=False).text == "toilet 12inch"
    assert rewriter.rewrite("toliet 12inch", spelling=False).text == "toliet 12 in"


def test_the_service_searches_the_corrected_query_and_says_so(
    sample_service: SearchService,
) -> None:
    response = sample_service.search(SearchRequest(q="cordles  driil", size=5, mode="lexical"))
    assert response.rewrite is not None
    assert response.rewrite.searched_q == "cordless drill"
    assert [(c.typed, c.searched, c.reason) for c in response.rewrite.changes] == [
        ("cordles", "cordless", "spelling"),
        ("driil", "drill", "spelling"),
    ]
    assert response.q == "cordles driil"  # the typed query, normalized
    assert "rewrite" in response.timings_ms
    assert all(h.category == "Tools > Power Tools > Drills" for h in response.hits[:3])

    # BM25 alone finds nothing for two unknown words; the request can turn rewriting off.
    raw = sample_service.search(SearchRequest(q="cordles driil", mode="lexical", rewrite=False))
    assert raw.rewrite is None and raw.hits == []

    clean = sample_service.search(SearchRequest(q="cordless drill", size=5, mode="lexical"))
    assert clean.rewrite is None
    assert [h.id for h in clean.hits] == [h.id for h in response.hits]


def test_each_rewrite_can_be_off_for_the_server(sample_index: Path, encoder: Encoder) -> None:
    settings = Settings(index_dir=sample_index, reload_interval_s=0, spelling=False)
    svc = SearchService(settings, encoder=encoder)
    svc.load()
    response = svc.search(SearchRequest(q="cordles driil 18volt", mode="lexical"))
    assert response.rewrite is not None
    assert [(c.typed, c.reason) for c in response.rewrite.changes] == [("18volt", "units")]

    svc = SearchService(settings.model_copy(update={"units": False}), encoder=encoder)
    svc.load()
    response = svc.search(SearchRequest(q="cordles driil 18volt", mode="lexical"))
    assert response.rewrite is None and "rewrite" not in response.timings_ms


def test_updated_products_words_are_never_corrected_away(
    tmp_path: Path, encoder: Encoder, sample_products: list[Product]
) -> None:
    products = list(sample_products[:60])
    report = CatalogReport(path="test", format="jsonl", sha256="s" * 64, rows_read=60, products=60)
    build_snapshot(products, report, tmp_path, encoder, BuildOptions(probe_count=20))
    svc = SearchService(Settings(index_dir=tmp_path, reload_interval_s=0), encoder=encoder)
    svc.load()
    before = svc.search(SearchRequest(q="makito hammer", mode="lexical"))
    assert before.rewrite is not None  # "makito" is one edit from the catalog's "makita"
    assert before.rewrite.searched_q == "makita hammer"

    new = Product(id="NEW-1", title="Makito Claw Hammer 16 oz", brand="Makito", category="Tools")
    svc.apply_updates([new], [])
    after = svc.search(SearchRequest(q="makito hammer", mode="lexical"))
    assert after.rewrite is None
    assert after.hits[0].id == "NEW-1"


def test_training_splits_are_rewritten_as_the_service_rewrites(
    sample_products: list[Product],
) -> None:
    judged = {sample_products[0].id: 3.0}
    train = EvalDataset(
        "t", (JudgedQuery("q1", "cordles drill 18volt", judged), JudgedQuery("q2", "drill", judged))
    )
    dev = EvalDataset("d", (JudgedQuery("q3", "milwakee drill", judged),))
    inputs = TrainingInputs(train, dev, sample_products, "0" * 64, {})
    done = rewrite_splits(inputs, default_model_path())
    assert [(q.qid, q.text, dict(q.judgments)) for q in done.train.queries] == [
        ("q1", "cordless drill 18 v", judged),  # the sample catalog writes "20V"
        ("q2", "drill", judged),
    ]
    assert done.dev.queries[0].text == "milwaukee drill"
    assert done.rewrite == {
        "enabled": True,
        "train_queries_rewritten": 1,
        "dev_queries_rewritten": 1,
    }
    assert inputs.train.queries[0].text == "cordles drill 18volt"  # the input is not changed
