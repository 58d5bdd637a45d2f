"""Shared domain types: products, candidates and the errors raised inside the engine.

Notation (kept the same everywhere): a *product id* is the catalog's string id; a
*row* is the product's position (0..n-1) in a snapshot's product store, which is
also the id the vector index uses. ``-1`` means "no result" in row arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "MAX_ATTRIBUTE_KEY_CHARS",
    "MAX_ATTRIBUTE_VALUE_CHARS",
    "MAX_BRAND_CHARS",
    "MAX_CATEGORY_CHARS",
    "MAX_DESCRIPTION_CHARS",
    "MAX_ID_CHARS",
    "MAX_IMAGE_URL_CHARS",
    "MAX_TITLE_CHARS",
    "PRODUCT_FIELD_LIMITS",
    "Candidate",
    "Product",
    "QueryRewrite",
    "RewriteChange",
    "RewriteReason",
    "ShopsearchError",
]


class ShopsearchError(Exception):
    """Base class of every error the engine raises on purpose."""


# Longest value (in characters) each product field may hold. The one definition: the
# catalog readers reject a longer value as a bad row (indexer/catalog.py) and the admin
# upsert answers 422 (api/admin_routes.py). They bound memory and index size against a broken
# export (a 1 MB "title"), far above real values: Home Depot titles reach 147 characters.
#: Elasticsearch caps ``_id`` at 512 bytes; an id with non-ASCII characters that fits
#: here but not there is rejected, by name, when the index is built.
MAX_ID_CHARS = 512
MAX_TITLE_CHARS = 1_000
#: Only the first ``item_text.DESCRIPTION_CHARS`` are searched; the rest is served as is.
MAX_DESCRIPTION_CHARS = 20_000
MAX_BRAND_CHARS = 200
#: A whole category path, e.g. ``"Tools > Power Tools > Drills"``.
MAX_CATEGORY_CHARS = 1_000
MAX_IMAGE_URL_CHARS = 2_048
MAX_ATTRIBUTE_KEY_CHARS = 200
MAX_ATTRIBUTE_VALUE_CHARS = 1_000
#: The limits by :class:`Product` field name (attributes: ``MAX_ATTRIBUTE_*_CHARS``).
PRODUCT_FIELD_LIMITS: Mapping[str, int] = MappingProxyType(
    {
        "id": MAX_ID_CHARS,
        "title": MAX_TITLE_CHARS,
        "description": MAX_DESCRIPTION_CHARS,
        "brand": MAX_BRAND_CHARS,
        "category": MAX_CATEGORY_CHARS,
        "image_url": MAX_IMAGE_URL_CHARS,
    }
)


@dataclass(frozen=True, slots=True)
class Product:
    """One catalog product as the engine sees it.

    ``category`` is a path like ``"Tools > Power Tools > Drills"``; ``attributes``
    holds any extra keyword attributes of the catalog (colour, material, ...), with
    string values so they can be filtered and faceted on.
    """

    id: str
    title: str
    description: str = ""
    brand: str = ""
    category: str = ""
    price: float | None = None
    in_stock: bool | None = None
    image_url: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def category_path(self) -> list[str]:
        """The category split into its levels, outermost first (``[]`` when unset)."""
        return [part.strip() for part in self.category.split(">") if part.strip()]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the product's fields."""
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "brand": self.brand,
            "category": self.category,
            "price": self.price,
            "in_stock": self.in_stock,
            "image_url": self.image_url,
            "attributes": dict(self.attributes),
        }


@dataclass(slots=True)
class Candidate:
    """A product on its way through the query path, with what each stage said of it.

    Ranks are 1-based; ``None`` means the leg did not return the product.
    """

    row: int
    dense_rank: int | None = None
    dense_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None
    fused_score: float = 0.0
    rerank_score: float | None = None
    #: The served order's score after rerank (``rerank.merge``); ``None`` if not reranked.
    final_score: float | None = None
    #: The shopper's component (shopper-aware re-scoring); ``None`` without history.
    personal_score: float | None = None


#: Why a query word was rewritten.
RewriteReason = Literal["units", "spelling"]


@dataclass(frozen=True, slots=True)
class RewriteChange:
    """One rewrite of a query: what was typed, what is searched instead, and why
    (``"units"`` or ``"spelling"``)."""

    typed: str
    searched: str
    reason: RewriteReason


@dataclass(frozen=True, slots=True)
class QueryRewrite:
    """A query before and after rewriting (``retrieval.query_rewrite``).

    ``text`` is what every stage searches; ``changes`` lists the rewrites in the order
    they were made, empty when the query is searched as typed.
    """

    original: str
    text: str
    changes: tuple[RewriteChange, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)
