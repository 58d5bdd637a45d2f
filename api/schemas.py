"""Request and response models of the search API (also used in-process by eval)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from shopsearch.retrieval.search_params import (
    MAX_NPROBE,
    FusionName,
    MergeName,
    ModeName,
    SearchParams,
)
from shopsearch.retrieval.types import RewriteReason

__all__ = [
    "ERROR_RESPONSES",
    "JSON_NUMBER",
    "MAX_DEADLINE_MS",
    "MAX_FACETS",
    "MAX_FILTER_VALUES",
    "MAX_QUERY_CHARS",
    "MAX_RESULT_WINDOW",
    "MAX_SIZE",
    "MIN_DEADLINE_MS",
    "NOT_BLANK",
    "ErrorOut",
    "Explain",
    "FacetBucket",
    "FilterSpec",
    "Hit",
    "JsonInt",
    "PriceRange",
    "RewriteChangeOut",
    "RewriteOut",
    "SearchRequest",
    "SearchResponse",
    "error_responses",
]

MAX_QUERY_CHARS = 512
MAX_SIZE = 100
#: The deepest hit a request can reach (``page * size``), like Elasticsearch's
#: ``index.max_result_window``: the legs are asked for at most this many candidates on
#: behalf of paging, so no request can make a native engine allocate without bound.
MAX_RESULT_WINDOW = 1000
#: Facet fields and price buckets one request may ask for.
MAX_FACETS = 20
#: Values one filter (brand, an attribute) may list, and keyword-attribute filters per request.
MAX_FILTER_VALUES = 100
#: Length of a filter value or name (a brand, category path, attribute value).
MAX_FILTER_CHARS = 256
#: Bounds of a request's ``deadline_ms``.
MIN_DEADLINE_MS = 10
MAX_DEADLINE_MS = 60_000

FilterValue = Annotated[str, Field(max_length=MAX_FILTER_CHARS)]

#: "Has a character str.strip() keeps", as a JSON Schema pattern. Not ``\S``: in the
#: ECMA regexes of JSON Schema, \s lacks \x1c-\x1f and \x85 that Python strips, so a
#: client (or a contract test) would take "\x1c" for a non-blank text.
NOT_BLANK = "[^\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


def _json_number(value: Any) -> Any:
    # JSON Schema counts 10.0 as an integer; text and booleans are not numbers.
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number, not text or a boolean")
    return value


#: An integer as JSON Schema means it (10 and 10.0; not "10", not true), in strict models.
#: Bounds go before these two (``Annotated[int, Field(ge=1), *NUMBER]``), or the schema
#: shows them as pydantic's ``ge``/``le`` instead of ``minimum``/``maximum``.
JSON_NUMBER = (Strict(False), BeforeValidator(_json_number))
JsonInt = Annotated[int, Strict(False), BeforeValidator(_json_number)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Price = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class PriceRange(BaseModel):
    """Inclusive price range; either side may be left open."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min: float | None = Field(None, ge=0, allow_inf_nan=False)
    max: float | None = Field(None, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> PriceRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max}); swap them")
        return self


class FilterSpec(BaseModel):
    """Filters: the built-in fields below plus any keyword attribute of the catalog
    (``{"color": "red"}`` or ``{"color": ["red", "blue"]}``). An attribute the snapshot
    does not have is rejected with 422 at search time."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        # What _keyword_attributes checks, stated in the schema for clients and contract tests.
        json_schema_extra={
            "maxProperties": MAX_FILTER_VALUES,
            "propertyNames": {"maxLength": MAX_FILTER_CHARS},
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": MAX_FILTER_CHARS},
                    {
                        "type": "array",
                        "items": {"type": "string", "maxLength": MAX_FILTER_CHARS},
                        "maxItems": MAX_FILTER_VALUES,
                    },
                ]
            },
        },
    )

    brand: (
        FilterValue | Annotated[list[FilterValue], Field(max_length=MAX_FILTER_VALUES)] | None
    ) = None
    category: str | None = Field(
        None,
        max_length=MAX_FILTER_CHARS,
        description="Category path prefix, e.g. 'Tools > Power Tools'.",
    )
    price: PriceRange | None = None
    in_stock: bool | None = None

    @model_validator(mode="after")
    def _keyword_attributes(self) -> FilterSpec:
        extra = self.model_extra or {}
        if len(extra) > MAX_FILTER_VALUES:
            raise ValueError(f"{len(extra)} attribute filters; send at most {MAX_FILTER_VALUES}")
        for key, value in extra.items():
            values = [value] if isinstance(value, str) else value
            ok = isinstance(values, list) and all(isinstance(v, str) for v in values)
            if not ok:
                raise ValueError(
                    f"attribute filter {key[:MAX_FILTER_CHARS]!r} must be a string or a list "
                    "of strings"
                )
            if len(key) > MAX_FILTER_CHARS or any(len(v) > MAX_FILTER_CHARS for v in values):
                raise ValueError(
                    f"attribute filter names and values are at most {MAX_FILTER_CHARS} characters"
                )
            if len(values) > MAX_FILTER_VALUES:
                raise ValueError(
                    f"attribute filter {key!r} lists {len(values)} values; send at most "
                    f"{MAX_FILTER_VALUES}"
                )
        return self

    def attributes(self) -> dict[str, tuple[str, ...]]:
        """The keyword-attribute filters, values as tuples."""
        out: dict[str, tuple[str, ...]] = {}
        for key, value in (self.model_extra or {}).items():
            out[key] = (value,) if isinstance(value, str) else tuple(value)
        return out


class SearchRequest(BaseModel):
    """One search. ``page`` is 1-based.

    Strict: a JSON value of the wrong type is a 422, never coerced (``"rewrite": 0`` is not
    ``false``, ``"size": "5"`` is not 5), so the request means what the schema says."""

    model_config = ConfigDict(extra="forbid", strict=True)

    q: str = Field(
        ...,
        min_length=1,
        max_length=MAX_QUERY_CHARS,
        description="The shopper's query (not blank).",
        # Documents what _not_blank checks (with a better message than a pattern's).
        json_schema_extra={"pattern": NOT_BLANK},
    )
    page: JsonInt = Field(
        1,
        ge=1,
        le=MAX_RESULT_WINDOW,
        description=f"1-based page number; page * size may not exceed {MAX_RESULT_WINDOW}.",
    )
    size: JsonInt = Field(10, ge=1, le=MAX_SIZE, description="Hits per page.")
    mode: ModeName = "hybrid"
    filters: FilterSpec | None = None
    facets: list[FilterValue] | None = Field(
        None,
        max_length=MAX_FACETS,
        description="Fields to count ('brand', 'category', 'price', 'in_stock', attributes).",
    )
    # Strict(False) on the pair only: a JSON array may become the tuple; its numbers stay strict.
    price_ranges: list[Annotated[tuple[Price, Price | None], Strict(False)]] | None = Field(
        None,
        max_length=MAX_FACETS,
        description="Price facet buckets as [min, max) pairs; max null = open.",
    )
    rerank: bool | None = Field(None, description="None: rerank when a reranker is configured.")
    rerank_depth: Annotated[int, Field(ge=1, le=500), *JSON_NUMBER] | None = None
    rerank_weight: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
        description="Weight of the reranker against the first stage "
        "(1: reranker only); None: the server's setting.",
    )
    rerank_merge: MergeName | None = Field(
        None,
        description="'scores' or 'ranks' (rerank/merge.py); None: the server's setting.",
    )
    rewrite: bool | None = Field(
        None,
        description="Rewrite units and correct misspellings before searching (None: the "
        "server's settings; false: search the query as typed).",
    )
    fusion: FusionName | None = Field(
        None,
        description="rrf, weighted (min-max scores) or weighted-rrf; default: the server's "
        "(the response's `fusion` says which ran).",
    )
    lexical_weight: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False)
    depth: Annotated[int, Field(ge=1, le=10_000), *JSON_NUMBER] | None = Field(
        None, description="Candidates asked of each leg."
    )
    nprobe: Annotated[int, Field(ge=1, le=MAX_NPROBE), *JSON_NUMBER] | None = Field(
        None,
        description="IVF lists of the vector index probed for this request (more: better "
        "recall, slower; capped at the index's list count; an exact index ignores it). "
        "None: the server's setting.",
    )
    deadline_ms: (
        Annotated[int, Field(ge=MIN_DEADLINE_MS, le=MAX_DEADLINE_MS), *JSON_NUMBER] | None
    ) = Field(
        None,
        description="Time budget of this request in ms, queueing included (None: the "
        "server's setting). Stages that no longer fit are cut and listed in `cut`.",
    )
    user: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="The signed-in shopper (pseudonymised before use; never stored raw). "
        "Their recent items re-score the candidates.",
    )
    session: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Browser session of a shopper not signed in (its recent items count).",
    )
    personalize: bool = Field(True, description="false: the same answer as without user/session.")
    explain: bool = False

    @field_validator("q")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or whitespace; send the shopper's query text")
        return value

    @model_validator(mode="after")
    def _within_result_window(self) -> SearchRequest:
        if self.page * self.size > MAX_RESULT_WINDOW:
            raise ValueError(
                f"page * size = {self.page * self.size} reaches past the deepest result "
                f"served ({MAX_RESULT_WINDOW}); ask for an earlier page or narrow the query "
                "with filters"
            )
        return self


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
    personal_score: float | None = Field(
        None,
        description="The shopper's component: how close the hit is to what the query "
        "attends to in the shopper's recent items (absent without history).",
    )
    merch: list[str] | None = Field(
        None,
        description="What merchandising rules did to this hit (pinned, boosted, buried); "
        "absent when no rule touched it.",
    )


class Hit(BaseModel):
    id: str
    score: float
    title: str
    description: str
    brand: str
    category: str
    # Optional in the schema: answers leave out null fields (response_model_exclude_none).
    price: float | None = Field(None, description="Absent when the catalog has no price.")
    in_stock: bool | None = Field(None, description="Absent when the catalog does not say.")
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
    mode: ModeName
    hits: list[Hit]
    total: int = Field(description="Products in the candidate set that pass the filters.")
    page: int
    size: int
    facets: dict[str, list[FacetBucket]]
    timings_ms: dict[str, float]
    index_version: str
    models: dict[str, Any]
    rerank: str = Field(description="'applied (N candidates)', 'off' or 'skipped (reason)'.")
    fusion: str = Field(
        "",
        description="How the two legs were fused: 'rrf', 'weighted (bm25 W)' or "
        "'weighted-rrf (bm25 W)'; empty when "
        "one leg answered alone (mode dense/lexical, or a leg degraded).",
    )
    degraded: list[str]
    rewrite: RewriteOut | None = Field(
        None, description="Set when units or spelling were rewritten: what was searched."
    )
    personalized: str = Field(
        "off",
        description="'applied (N recent items)', 'no history' or 'off' (no shopper, or "
        "personalize=false).",
    )
    cut: list[str] = Field(
        default_factory=list,
        description="Work left out to meet the request's deadline, e.g. 'rerank' or "
        "'rerank depth 50 -> 20'; empty when the answer is complete.",
    )
    params: SearchParams | None = Field(
        None,
        description="With explain: every parameter the ranking ran with, the server's "
        "defaults resolved (nprobe/refine_factor absent: the index's own).",
    )
    rules_version: int | None = Field(
        None,
        description="The merchandising rules version the answer was ranked with (0: no "
        "rules were ever set); with index_version it reproduces the answer.",
    )
    merch: list[str] | None = Field(
        None,
        description="With explain: each merchandising rule that matched the query and "
        "what it did, e.g. 'rule 0: pin P1 at 1: not shown (excluded by the request's "
        "filters)'.",
    )
    cached: bool = Field(
        False,
        description="True when the answer was served from the result cache (a repeated "
        "request without a shopper on the same catalog); its timings_ms are then "
        "'cache' and 'total'.",
    )


class ErrorOut(BaseModel):
    """An error answer (401, 404, 409, 413, 503): what went wrong and how to fix it."""

    detail: str


#: Error answers documented in the OpenAPI schema, by status.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "The body could not be read as JSON text."},
    401: {"model": ErrorOut, "description": "Missing or wrong bearer token."},
    404: {"model": ErrorOut, "description": "Not found (or admin endpoints are off)."},
    409: {
        "model": ErrorOut,
        "description": "The snapshot cannot be served (damaged or mismatched).",
    },
    413: {"model": ErrorOut, "description": "Request body over the size limit."},
    503: {
        "model": ErrorOut,
        "description": "Busy (retry after `Retry-After` seconds), past the deadline, or not ready.",
    },
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a route that can answer these error statuses."""
    return {code: ERROR_RESPONSES[code] for code in codes}
