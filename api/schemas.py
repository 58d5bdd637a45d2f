"""Request and response models of the search API (also used in-process by eval)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from retrieval.types import RewriteReason

__all__ = [
    "MAX_QUERY_CHARS",
    "MAX_SIZE",
    "Explain",
    "FacetBucket",
    "FilterSpec",
    "Hit",
    "PriceRange",
    "RewriteChangeOut",
    "RewriteOut",
    "SearchRequest",
    "SearchResponse",
]

MAX_QUERY_CHARS = 512
MAX_SIZE = 100

Mode = Literal["hybrid", "dense", "lexical"]


class PriceRange(BaseModel):
    """Inclusive price range; either side may be left open."""

    model_config = ConfigDict(extra="forbid")

    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> PriceRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); swap them")
        return self


class FilterSpec(BaseModel):
    """Filters: the built-in fields below plus any keyword attribute of the catalog
    (``{"color": "red"}`` or ``{"color": ["red", "blue"]}``). An attribute the snapshot
    does not have is rejected with 422 at search time."""

    model_config = ConfigDict(extra="allow")

    brand: str | list[str] | None = None
    category: str | None = Field(
        None, description="Category path prefix, e.g. 'Tools > Power Tools'."
    )
    price: PriceRange | None = None
    in_stock: bool | None = None

    @model_validator(mode="after")
    def _keyword_attributes(self) -> FilterSpec:
        for key, value in (self.model_extra or {}).items():
            ok = isinstance(value, str) or (
                isinstance(value, list) and all(isinstance(v, str) for v in value)
            )
            if not ok:
                raise ValueError(
                    f"attribute filter {key!r} must be a string or a list of strings, got {value!r}"
                )
        return self

    def attributes(self) -> dict[str, tuple[str, ...]]:
        """The keyword-attribute filters, values as tuples."""
        out: dict[str, tuple[str, ...]] = {}
        for key, value in (self.model_extra or {}).items():
            out[key] = (value,) if isinstance(value, str) else tuple(value)
        return out


class SearchRequest(BaseModel):
    """One search. ``page`` is 1-based."""

    model_config = ConfigDict(extra="forbid")

    q: str = Field(..., max_length=MAX_QUERY_CHARS, description="The shopper's query.")
    page: int = Field(1, ge=1, description="1-based page number.")
    size: int = Field(10, ge=1, le=MAX_SIZE, description="Hits per page.")
    mode: Mode = "hybrid"
    filters: FilterSpec | None = None
    facets: list[str] | None = Field(
        None, description="Fields to count ('brand', 'category', 'price', 'in_stock', attributes)."
    )
    price_ranges: list[tuple[float, float | None]] | None = Field(
        None, description="Price facet buckets as [min, max) pairs; max null = open."
    )
    rerank: bool | None = Field(None, description="None: rerank when a reranker is configured.")
    rerank_depth: int | None = Field(None, ge=1, le=500)
    rerank_weight: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description="Weight of the reranker against the first stage "
        "(1: reranker only); None: the server's setting.",
    )
    rerank_merge: Literal["scores", "ranks"] | None = Field(
        None,
        description="'scores' or 'ranks' (rerank/merge.py); None: the server's setting.",
    )
    rewrite: bool | None = Field(
        None,
        description="Rewrite units and correct misspellings before searching (None: the "
        "server's settings; false: search the query as typed).",
    )
    fusion: Literal["rrf", "weighted"] | None = None
    lexical_weight: float | None = Field(None, ge=0.0, le=1.0)
    depth: int | None = Field(None, ge=1, le=10_000, description="Candidates asked of each leg.")
    explain: bool = False

    @field_validator("q")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or whitespace; send the shopper's query text")
        return value


class Explain(BaseModel):
    """Why a hit is where it is."""

    dense_rank: int | None = None
    dense_score: float | None = None
    lexical_rank: int | None = None
    lexical_score: float | None = None
    fused_score: float
    rerank_score: float | None = Field(None, description="The cross-encoder's raw score.")
    final_score: float | None = Field(
        None, description="After rerank: the merge of the fused and the reranker's orders."
    )


class Hit(BaseModel):
    id: str
    score: float
    title: str
    description: str
    brand: str
    category: str
    price: float | None
    in_stock: bool | None
    image_url: str
    attributes: dict[str, str]
    explain: Explain | None = None


class RewriteChangeOut(BaseModel):
    typed: str = Field(description="What the shopper typed.")
    searched: str = Field(description="What was searched instead.")
    reason: RewriteReason


class RewriteOut(BaseModel):
    """What query rewriting did (absent when the query was searched as typed)."""

    searched_q: str = Field(description="The query every stage searched.")
    changes: list[RewriteChangeOut]


class FacetBucket(BaseModel):
    value: str
    count: int


class SearchResponse(BaseModel):
    query_id: str
    q: str
    mode: Mode
    hits: list[Hit]
    total: int = Field(description="Products in the candidate set that pass the filters.")
    page: int
    size: int
    facets: dict[str, list[FacetBucket]]
    timings_ms: dict[str, float]
    index_version: str
    models: dict[str, Any]
    rerank: str = Field(description="'applied (N candidates)', 'off' or 'skipped (reason)'.")
    degraded: list[str]
    rewrite: RewriteOut | None = Field(
        None, description="Set when units or spelling were rewritten: what was searched."
    )
