"""The parts of a search answer built from the ranked candidates: hits and facet counts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from shopsearch.api.schemas import Explain, FacetBucket, Hit
from shopsearch.retrieval.filters import InvalidFilterError, ProductTable
from shopsearch.retrieval.types import Candidate, Product

__all__ = ["DEFAULT_FACETS", "DEFAULT_PRICE_RANGES", "FACET_SIZE", "compute_facets", "render_hit"]

DEFAULT_FACETS = ("brand", "category", "price", "in_stock")
DEFAULT_PRICE_RANGES: tuple[tuple[float, float | None], ...] = (
    (0, 25),
    (25, 50),
    (50, 100),
    (100, 250),
    (250, 500),
    (500, None),
)
#: Values listed per terms facet.
FACET_SIZE = 20


def render_hit(
    product: Product, cand: Candidate, explain: bool, merch: Sequence[str] | None = None
) -> Hit:
    """One hit of the answer; ``explain`` adds each stage's rank and score, and ``merch``:
    what merchandising rules did to it (``rerank.merchandising.MerchResult.notes``)."""
    score = cand.final_score if cand.final_score is not None else cand.fused_score
    return Hit(
        id=product.id,
        score=score,
        title=product.title,
        description=product.description,
        brand=product.brand,
        category=product.category,
        price=product.price,
        in_stock=product.in_stock,
        image_url=product.image_url,
        attributes=dict(product.attributes),
        explain=Explain(
            dense_rank=cand.dense_rank,
            dense_score=cand.dense_score,
            lexical_rank=cand.lexical_rank,
            lexical_score=cand.lexical_score,
            fused_score=cand.fused_score,
            rerank_score=cand.rerank_score,
            final_score=cand.final_score,
            personal_score=cand.personal_score,
            merch=list(merch) if merch else None,
        )
        if explain
        else None,
    )


def _price_label(lo: float, hi: float | None) -> str:
    return f"{lo:g}+" if hi is None else f"{lo:g}-{hi:g}"


def compute_facets(
    table: ProductTable,
    rows: Sequence[int],
    fields: Sequence[str],
    price_ranges: Sequence[tuple[float, float | None]],
) -> dict[str, list[FacetBucket]]:
    """Counts over ``rows`` (the filtered candidate set) for each facet field.

    Terms facets list the :data:`FACET_SIZE` most common values (ties by value);
    ``price`` counts each ``[min, max)`` range, in the order given. Unknown fields raise
    :class:`retrieval.filters.InvalidFilterError`.
    """
    out: dict[str, list[FacetBucket]] = {}
    products = table.products
    for name in fields:
        if name == "price":
            prices = table.price[np.asarray(rows, dtype=np.int64)] if rows else np.zeros(0)
            out[name] = [
                FacetBucket(
                    value=_price_label(lo, hi),
                    count=int(((prices >= lo) & ((prices < hi) if hi is not None else True)).sum()),
                )
                for lo, hi in price_ranges
            ]
            continue
        counts: Counter[str] = Counter()
        if name == "brand":
            counts.update(products[r].brand for r in rows if products[r].brand)
        elif name == "category":
            counts.update(products[r].category for r in rows if products[r].category)
        elif name == "in_stock":
            counts.update(
                str(products[r].in_stock).lower() for r in rows if products[r].in_stock is not None
            )
        elif name in table.attributes:
            counts.update(
                products[r].attributes[name] for r in rows if name in products[r].attributes
            )
        else:
            valid = ", ".join(dict.fromkeys(("price", *table.filter_fields)))
            raise InvalidFilterError(
                f"facets.{name}", f"unknown facet field; valid fields are: {valid}"
            )
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:FACET_SIZE]
        out[name] = [FacetBucket(value=v, count=c) for v, c in ranked]
    return out
