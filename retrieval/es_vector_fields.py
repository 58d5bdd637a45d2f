"""The filter fields of the Elasticsearch vector leg's documents, and request filters
as clauses over them (see :mod:`retrieval.es_vector_index`).

Folded exactly as :class:`~retrieval.filters.ProductTable` and the lexical leg fold
them (``brand_kw`` case-folded, ``category_kw`` with every path prefix, ``attr_kw`` as
``key=value``), so a filter inside the kNN search selects what the service's own filter
check selects (tests/test_es_vector.py compares them). The lexical leg's
``ElasticsearchIndex`` filters with the same :func:`filter_clauses`.
"""

from __future__ import annotations

import math
from typing import Any

from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.lexical_index import _category_levels
from shopsearch.retrieval.types import Product

__all__ = ["filter_clauses", "filter_fields"]


def filter_fields(product: Product) -> dict[str, Any]:
    """The filter fields of ``product``'s document, folded as
    :class:`~retrieval.filters.ProductTable` folds them (and as the lexical leg does)."""
    doc: dict[str, Any] = {"id": product.id}
    if product.brand:
        doc["brand_kw"] = product.brand.casefold()
    if product.category:
        doc["category_kw"] = _category_levels(product.category)
    attrs = [f"{k}={v.casefold()}" for k, v in product.attributes.items() if v]
    if attrs:
        doc["attr_kw"] = attrs
    if product.price is not None and math.isfinite(product.price):
        doc["price"] = float(product.price)
    if product.in_stock is not None:
        doc["in_stock"] = bool(product.in_stock)
    return doc


def filter_clauses(filters: Filters) -> list[dict[str, Any]]:
    """``filters`` as Elasticsearch filter clauses over :func:`filter_fields`; they select
    what :meth:`~retrieval.filters.ProductTable.mask` selects (tests check it)."""
    out: list[dict[str, Any]] = []
    if filters.brand:
        out.append({"terms": {"brand_kw": sorted({b.casefold() for b in filters.brand})}})
    if filters.category is not None:
        levels = _category_levels(filters.category)
        if levels:
            out.append({"term": {"category_kw": levels[-1]}})
    if filters.price_min is not None or filters.price_max is not None:
        bounds: dict[str, float] = {}
        if filters.price_min is not None:
            bounds["gte"] = float(filters.price_min)
        if filters.price_max is not None:
            bounds["lte"] = float(filters.price_max)
        out.append({"range": {"price": bounds}})
    if filters.in_stock is not None:
        out.append({"term": {"in_stock": bool(filters.in_stock)}})
    for key, values in filters.attributes.items():
        if values:
            out.append({"terms": {"attr_kw": sorted({f"{key}={v.casefold()}" for v in values})}})
    return out
