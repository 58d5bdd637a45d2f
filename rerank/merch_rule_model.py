"""The merchandising rule model: what a rule file (and ``PUT /v1/admin/rules``) may say.

Pydantic models whose validation errors name the rule's index and field, the bounds of
every list and text, query normalization, and :func:`describe_change` (the audit log's
summary of a change). What the rules *do* is :mod:`rerank.merchandising`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StringConstraints,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from shopsearch.retrieval.filters import Filters
from shopsearch.retrieval.types import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_BRAND_CHARS,
    MAX_CATEGORY_CHARS,
    MAX_ID_CHARS,
)

__all__ = [
    "MAX_POSITION",
    "MAX_RULES",
    "HideRule",
    "Match",
    "MoveRule",
    "PinRule",
    "Rule",
    "RuleSet",
    "When",
    "WhenAny",
    "WhenContains",
    "WhenQuery",
    "describe_change",
    "normalize",
]

#: Rules one set may hold (a shop with more wants a search-merchandising product).
MAX_RULES = 1_000
#: Queries one ``when.query`` list may name.
MAX_QUERIES = 200
#: Characters of a query or ``contains`` term (the search API's own limit).
MAX_RULE_QUERY_CHARS = 512
#: Deepest position a pin may ask for (pins are for the first pages).
MAX_POSITION = 100
#: Products one ``hide`` rule may list, and values one ``match`` field may list.
MAX_HIDDEN = 1_000
MAX_VALUES = 100
MAX_NAME_CHARS = 100

_SPACES = re.compile(r"\s+")


def normalize(query: str) -> str:
    """``query`` as rules compare it: case-folded, whitespace collapsed and trimmed."""
    return _SPACES.sub(" ", query).strip().casefold()


QueryText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_RULE_QUERY_CHARS)]
QueryList = Annotated[list[QueryText], Field(min_length=1, max_length=MAX_QUERIES)]
ProductId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Brand = Annotated[str, StringConstraints(min_length=1, max_length=MAX_BRAND_CHARS)]
AttrKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_KEY_CHARS)]
AttrValue = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_VALUE_CHARS)]
AttrValues = Annotated[list[AttrValue], Field(min_length=1, max_length=MAX_VALUES)]

# Every constraint of the models below is one JSON Schema states too (the OpenAPI
# contract test sends schema-valid rule sets and expects them accepted): "one of these
# shapes" is a union, "at least one field" is minProperties, and an optional field is
# left out rather than sent as null.


class _Frozen(BaseModel):
    # Unknown keys are an error: a typo ("postion") must not silently mean "default".
    # Strict: "1" is not a position, nor 1 a boolean.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class WhenQuery(_Frozen):
    """The rule applies to these queries (exact, after normalization)."""

    query: QueryText | QueryList = Field(description="One query or a list of queries.")
    contains: QueryText | None = Field(
        None, description="And the query must contain this term as whole words."
    )


class WhenAny(_Frozen):
    """The rule applies to every query (that ``contains`` the term, when given)."""

    any: Literal[True]
    contains: QueryText | None = Field(
        None, description="And the query must contain this term as whole words."
    )


class WhenContains(_Frozen):
    """The rule applies to every query containing ``contains`` as whole words."""

    contains: QueryText


def _when_shape(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("any", "query", "contains"):
            if key in value:
                return key
        return None
    if isinstance(value, BaseModel):
        return {WhenAny: "any", WhenQuery: "query", WhenContains: "contains"}.get(type(value))
    return None


#: Which queries a rule is for: ``{"query": q or [q, ...]}``, ``{"any": true}`` or
#: ``{"contains": term}`` (the first two may add ``contains`` too).
When = Annotated[
    Annotated[WhenAny, Tag("any")]
    | Annotated[WhenQuery, Tag("query")]
    | Annotated[WhenContains, Tag("contains")],
    Discriminator(
        _when_shape,
        custom_error_type="when",
        custom_error_message='say which queries the rule is for: "query", "any": true or '
        '"contains"',
    ),
]


def _json_number(value: object) -> object:
    # A whole number as JSON Schema means it in a strict model: 2 and 2.0, not "2" nor true.
    if isinstance(value, str | bool):
        raise ValueError("must be a JSON number, not text or a boolean")
    return value


def _rejects_null(value: object) -> object:
    if value is None:
        raise ValueError("null is not a value here; leave the field out instead")
    return value


class Match(_Frozen):
    """What a product must be for a boost or bury rule: every field given must hold
    (at least one must be given)."""

    model_config = ConfigDict(json_schema_extra={"minProperties": 1})

    brand: list[Brand] = Field(
        default_factory=list,
        min_length=1,
        max_length=MAX_VALUES,
        description="Any of these brands (case-insensitive).",
    )
    category: str = Field(
        "",
        min_length=1,
        max_length=MAX_CATEGORY_CHARS,
        description="A category path prefix, e.g. 'Tools > Power Tools'.",
    )
    in_stock: Annotated[bool | None, WithJsonSchema({"type": "boolean"})] = None
    attributes: dict[AttrKey, AttrValues] = Field(
        default_factory=dict,
        min_length=1,
        max_length=MAX_VALUES,
        description="Keyword attributes: any of the values for each key.",
    )

    _no_null = field_validator("brand", "category", "in_stock", "attributes", mode="before")(
        _rejects_null
    )

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not (self.brand or self.category or self.in_stock is not None or self.attributes):
            raise ValueError("match nothing? give brand, category, in_stock or attributes")
        return self

    def filters(self) -> Filters:
        """The same condition as request filters (one semantics for both)."""
        return Filters(
            brand=tuple(self.brand),
            category=self.category or None,
            in_stock=self.in_stock,
            attributes={k: tuple(v) for k, v in self.attributes.items()},
        )

    def describe(self) -> str:
        """The condition in words, for explain (``brand=Behr, in_stock=false``)."""
        parts = []
        if self.brand:
            parts.append(f"brand={'|'.join(self.brand)}")
        if self.category:
            parts.append(f"category={self.category}")
        if self.in_stock is not None:
            parts.append(f"in_stock={str(self.in_stock).lower()}")
        for key, values in self.attributes.items():
            parts.append(f"{key}={'|'.join(values)}")
        return ", ".join(parts)


class _Rule(_Frozen):
    name: str = Field("", max_length=MAX_NAME_CHARS, description="Shown in explain and history.")
    when: When


class PinRule(_Rule):
    """Show ``product`` at ``position`` (1-based) of the result list."""

    action: Literal["pin"]
    product: ProductId
    position: Annotated[
        int, Field(ge=1, le=MAX_POSITION), Strict(False), BeforeValidator(_json_number)
    ]


class HideRule(_Rule):
    """Never show ``products`` for the matching queries."""

    action: Literal["hide"]
    products: list[ProductId] = Field(min_length=1, max_length=MAX_HIDDEN)


class MoveRule(_Rule):
    """Move the products that ``match`` ahead of the others (boost) or behind (bury)."""

    action: Literal["boost", "bury"]
    match: Match


#: One rule; the ``action`` field says which kind (errors name it in their ``loc``).
Rule = Annotated[PinRule | HideRule | MoveRule, Field(discriminator="action")]


class RuleSet(_Frozen):
    """A whole set of rules: the rule file, the body of ``PUT /v1/admin/rules`` and what
    each stored version holds. Rules are numbered from 0 in errors and explain."""

    rules: list[Rule] = Field(default_factory=list, max_length=MAX_RULES)


def _canonical(rule: PinRule | HideRule | MoveRule) -> str:
    return json.dumps(rule.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def _summary(rule: PinRule | HideRule | MoveRule) -> str:
    """A rule in a few words, for the audit log: ``'drill hero' pin SKU-1 at 1``."""
    name = f"{rule.name!r} " if rule.name else ""
    if isinstance(rule, PinRule):
        what = f"{rule.product} at {rule.position}"
    elif isinstance(rule, HideRule):
        what = ", ".join(rule.products[:5]) + (" ..." if len(rule.products) > 5 else "")
    else:
        what = rule.match.describe()
    return f"{name}{rule.action} {what}"


def describe_change(old: RuleSet, new: RuleSet) -> dict[str, Any]:
    """What changed from ``old`` to ``new``, for the audit log: the rules added and
    removed (by content: a rule that moved in the list is neither), in a few words
    each, and the counts."""
    rules = {_canonical(r): r for r in (*old.rules, *new.rules)}
    before = Counter(_canonical(r) for r in old.rules)
    after = Counter(_canonical(r) for r in new.rules)

    def summary(counter: Counter[str]) -> list[str]:
        return sorted(_summary(rules[key]) for key in counter.elements())

    return {
        "rules_before": len(old.rules),
        "rules_after": len(new.rules),
        "added": summary(after - before),
        "removed": summary(before - after),
    }
