"""What the Elasticsearch legs' indices hold: mappings, analyzers and documents.

The lexical index (:class:`~retrieval.elasticsearch_index.ElasticsearchIndex`) maps the
text fields with one analyzer (:data:`ANALYZER_CHOICES`) and records it, the boosts and
the query type in the mapping's ``_meta``; its documents are :func:`lexical_document`.

The default analyzer, :data:`ENGINE_ANALYZER` (``en_stem``), is the embedded tantivy
index's own, run by the engine: documents and queries carry the terms
:func:`engine_terms` makes (tantivy's simple tokenizer, lower-case, English stemmer),
and the cluster only splits them on spaces (its core ``whitespace`` analyzer, present on
every distribution). Both lexical legs therefore index and search the same terms,
whatever analysis modules the cluster has; Elasticsearch's own ``english`` analyzer
(stop words, possessives, a different stemmer) is the alternative where wanted.
Both legs' mappings end in the same keyword, price and stock fields
(:func:`filter_field_mappings`), which :func:`~retrieval.es_vector_fields.filter_fields`
and :func:`lexical_document` fill, folded alike, and
:func:`~retrieval.es_vector_fields.filter_clauses` filters on.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from shopsearch.retrieval.item_text import DESCRIPTION_CHARS
from shopsearch.retrieval.lexical_index import _category_levels
from shopsearch.retrieval.match_set import stem_analyzer
from shopsearch.retrieval.types import Product

__all__ = [
    "ANALYZER_CHOICES",
    "ENGINE_ANALYZER",
    "category_facet_field",
    "engine_query_terms",
    "engine_terms",
    "filter_field_mappings",
    "lexical_document",
    "lexical_mapping",
]

#: The analyzer the engine runs itself (tantivy's ``en_stem``); ``"auto"`` means it.
ENGINE_ANALYZER = "en_stem"
#: Analyzers the text fields can use. ``english`` needs the cluster's analysis-common
#: module (absent from the test distribution: creating such an index fails, naming it).
ANALYZER_CHOICES = ("auto", ENGINE_ANALYZER, "english", "standard")


def engine_terms(text: str) -> str:
    """``text`` as the embedded index analyses it, terms joined by single spaces (all of
    them, repeats included, so term frequencies and field lengths are tantivy's)."""
    return " ".join(stem_analyzer().analyze(text))


#: A query's words as tantivy's query parser reads them: a quoted group, or a run of
#: characters other than white space, parentheses and quotes.
_QUERY_WORD = re.compile(r'"([^"]*)"|([^\s()"]+)')


def engine_query_terms(query: str) -> tuple[list[str], list[list[str]]]:
    """``query`` as the embedded index's query parser reads it: the terms of words that
    analyse to one term, and the phrases of words (or quoted groups) that analyse to
    several ("3/4-in." -> the phrase ``3 4 in``), which must match in that order. Words
    without a term ("!!") are left out."""
    terms: list[str] = []
    phrases: list[list[str]] = []
    analyzer = stem_analyzer()
    for quoted, word in _QUERY_WORD.findall(query):
        tokens = analyzer.analyze(quoted or word)
        if len(tokens) == 1:
            terms.append(tokens[0])
        elif tokens:
            phrases.append(list(tokens))
    return terms, phrases


def category_facet_field(analyzer: str) -> str:
    """The keyword field holding the catalog's category paths as written, for facets."""
    return "category_raw" if analyzer == ENGINE_ANALYZER else "category.raw"


def filter_field_mappings() -> dict[str, Any]:
    """The mapping of the filter fields both legs' documents carry (a new dict each call)."""
    return {
        # Case-folded in Python (str.casefold), as filters_hold compares them.
        "brand_kw": {"type": "keyword"},
        "category_kw": {"type": "keyword"},
        "attr_kw": {"type": "keyword"},
        "price": {"type": "double"},
        "in_stock": {"type": "boolean"},
    }


def lexical_mapping(
    analyzer: str, field_boosts: Mapping[str, float], multi_match_type: str
) -> dict[str, Any]:
    """The mapping of a lexical index whose text fields use ``analyzer``; ``_meta`` records
    it with the boosts and query type (read back by ``ElasticsearchIndex.analyzer``).

    With :data:`ENGINE_ANALYZER` the text fields hold :func:`engine_terms` and split on
    spaces; the display copies of brand and category are then keyword fields of their
    own (``brand_raw``, ``category_raw``), since a sub-field would index the terms."""
    if analyzer == ENGINE_ANALYZER:
        text: dict[str, Any] = {"type": "text", "analyzer": "whitespace"}
        brand: dict[str, Any] = text
        category: dict[str, Any] = text
        display = {
            "brand_raw": {"type": "keyword", "ignore_above": 256},
            "category_raw": {"type": "keyword", "ignore_above": 1024},
        }
    else:
        text = {"type": "text", "analyzer": analyzer}
        # ``raw`` keeps the catalog's spelling for display (facets of shown values).
        brand = {**text, "fields": {"raw": {"type": "keyword", "ignore_above": 256}}}
        category = {**text, "fields": {"raw": {"type": "keyword", "ignore_above": 1024}}}
        display = {}
    return {
        "dynamic": "strict",
        "_meta": {
            "shopsearch": {
                "analyzer": analyzer,
                "field_boosts": field_boosts,
                "multi_match_type": multi_match_type,
            }
        },
        "properties": {
            "id": {"type": "keyword"},
            "title": text,
            "description": text,
            "brand": brand,
            "category": category,
            **display,
            **filter_field_mappings(),
        },
    }


def lexical_document(product: Product, analyzer: str) -> dict[str, Any]:
    """The document of ``product`` in a lexical index mapped for ``analyzer``
    (``description`` cut to ``DESCRIPTION_CHARS``, as the embedded index cuts it; the
    text as :func:`engine_terms` for :data:`ENGINE_ANALYZER`; filter fields folded as
    :func:`filter_field_mappings` says)."""
    engine = analyzer == ENGINE_ANALYZER

    def text(value: str) -> str:
        return engine_terms(value) if engine else value

    doc: dict[str, Any] = {"id": product.id, "title": text(product.title)}
    if product.brand:
        doc["brand"] = text(product.brand)
        doc["brand_kw"] = product.brand.casefold()
        if engine:
            doc["brand_raw"] = product.brand
    if product.category:
        doc["category"] = text(product.category)
        doc["category_kw"] = _category_levels(product.category)
        if engine:
            doc["category_raw"] = product.category
    if product.description:
        doc["description"] = text(product.description[:DESCRIPTION_CHARS])
    attrs = [f"{k}={v.casefold()}" for k, v in product.attributes.items() if v]
    if attrs:
        doc["attr_kw"] = attrs
    if product.price is not None:
        # NaN/inf are sent as is: Elasticsearch rejects the document and the build
        # reports it by id, rather than this backend guessing what the catalog meant.
        doc["price"] = float(product.price)
    if product.in_stock is not None:
        doc["in_stock"] = bool(product.in_stock)
    return doc
