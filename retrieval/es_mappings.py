"""What the Elasticsearch legs' indices hold: mappings, analyzers and documents.

The lexical index (:class:`~retrieval.elasticsearch_index.ElasticsearchIndex`) maps the
text fields with one analyzer (:data:`ANALYZER_CHOICES`) and records it, the boosts and
the query type in the mapping's ``_meta``; its documents are :func:`lexical_document`.
Both legs' mappings end in the same keyword, price and stock fields
(:func:`filter_field_mappings`), which :func:`~retrieval.es_vector_fields.filter_fields`
and :func:`lexical_document` fill, folded alike, and
:func:`~retrieval.es_vector_fields.filter_clauses` filters on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shopsearch.retrieval.item_text import DESCRIPTION_CHARS
from shopsearch.retrieval.lexical_index import _category_levels
from shopsearch.retrieval.types import Product

__all__ = ["ANALYZER_CHOICES", "filter_field_mappings", "lexical_document", "lexical_mapping"]

#: Analyzers the text fields can use; ``"auto"`` picks ``english`` when the cluster has it.
ANALYZER_CHOICES = ("auto", "english", "standard")


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
    it with the boosts and query type (read back by ``ElasticsearchIndex.analyzer``)."""
    text = {"type": "text", "analyzer": analyzer}
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
            # ``raw`` keeps the catalog's spelling for display (facets of shown values).
            "brand": {**text, "fields": {"raw": {"type": "keyword", "ignore_above": 256}}},
            "category": {
                **text,
                "fields": {"raw": {"type": "keyword", "ignore_above": 1024}},
            },
            **filter_field_mappings(),
        },
    }


def lexical_document(product: Product) -> dict[str, Any]:
    """The lexical index's document of ``product`` (``description`` cut to
    ``DESCRIPTION_CHARS``, filter fields folded as :func:`filter_field_mappings` says)."""
    doc: dict[str, Any] = {"id": product.id, "title": product.title}
    if product.brand:
        doc["brand"] = product.brand
        doc["brand_kw"] = product.brand.casefold()
    if product.category:
        doc["category"] = product.category
        doc["category_kw"] = _category_levels(product.category)
    if product.description:
        doc["description"] = product.description[:DESCRIPTION_CHARS]
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
