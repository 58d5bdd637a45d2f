"""Merchandising rules: pin, boost, bury and hide products for chosen queries.

A shop's merchandiser overrides relevance for some queries: "the house-brand drill first
for *drill*", "out-of-stock products last everywhere", "never show P123 for *paint*".
This module is the pure part: the rule model (validated, with errors that name the rule's
index and field), matching a query, and :func:`apply_rules`, which re-arranges a
request's candidates. Storage, versions and the audit log are in
:mod:`indexer.merch_rules`; the admin API and the CLI in ``api/merch_routes.py`` and
``api/cli_rules.py``.

A rule file (and the body of ``PUT /v1/admin/rules``)::

    {"rules": [
      {"name": "drill hero", "when": {"query": ["drill", "cordless drill"]},
       "action": "pin", "product": "P123", "position": 1},
      {"when": {"any": true}, "action": "bury", "match": {"in_stock": false}},
      {"when": {"contains": "paint"}, "action": "boost", "match": {"brand": ["Behr"]}},
      {"when": {"query": "paint"}, "action": "hide", "products": ["P9", "P10"]}
    ]}

**Matching** (``when``): queries are compared *normalized* (case-folded, whitespace
collapsed). ``query`` is one query or a list, matched exactly; ``any: true`` matches
every query; ``contains`` matches a query holding that term as whole words (``"paint"``
matches *white paint* but not *paintbrush*), alone or narrowing ``query``/``any``. A rule
matches when the typed query *or* the text searched after rewriting (spelling, units)
matches, so a rule for *drill* also serves the shopper who typed *dril*.

**Actions**, applied to the candidates that passed the request's filters, in this
order, whatever the order of the rules (so conflicts resolve the same way every time):

1. ``hide``: the listed products are removed (not shown, not counted in ``total`` nor
   in facets). Hide wins over everything: a product both hidden and pinned is hidden.
2. ``boost`` / ``bury``: each candidate gets a level, +1 for every boost rule whose
   ``match`` it meets and -1 for every bury rule; the list is then sorted by level,
   highest first, *stably*, so relevance order holds within a level. A boost moves the
   matching products ahead of all the others (a bury behind them); a product both
   boosted and buried stays among the unmoved ones. ``match`` says what a product must
   be, with the request filters' semantics (:class:`retrieval.filters.Filters`):
   ``brand`` (any of, case-insensitive), ``category`` (a path prefix, level by level),
   ``in_stock`` and keyword ``attributes`` (any of the values); every field given must
   hold. A match on an attribute the catalog does not have is skipped (explain says so).
3. ``pin``: the product is put at its 1-based ``position`` in the whole result list (page
   2 of size 10 shows positions 11-20). If it is among the candidates it moves there; if
   no leg retrieved it, it is inserted when it exists in the serving snapshot and passes
   the request's filters. **A pinned product that the request's filters exclude is not
   shown.** Rules pin in file order: the earlier rule wins a position, and a later pin
   to a taken position takes the next free one; a product pinned twice stays where the
   first rule put it. A position past the end of the list puts the product last.

Scores are never changed: a hit's ``score`` (and ``explain``) stays what retrieval and
rerank said of it, and ``explain.merch`` says what the rules did to it; a pinned product
that no leg retrieved has no leg ranks and a fused score of 0. The served order is
therefore not always by score once a rule moved something, which is the point of a rule.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from shopsearch.retrieval.filters import Filters, InvalidFilterError, ProductTable
from shopsearch.retrieval.types import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_BRAND_CHARS,
    MAX_CATEGORY_CHARS,
    MAX_ID_CHARS,
    Candidate,
)

__all__ = [
    "MAX_POSITION",
    "MAX_RULES",
    "HideRule",
    "Match",
    "MerchResult",
    "MoveRule",
    "PinRule",
    "Rule",
    "RuleSet",
    "Rulebook",
    "When",
    "apply_rules",
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


QueryText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_RULE_QUERY_CHARS)
]
ProductId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_CHARS)]
Brand = Annotated[str, StringConstraints(min_length=1, max_length=MAX_BRAND_CHARS)]
AttrKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_KEY_CHARS)]
AttrValue = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_VALUE_CHARS)]


class _Frozen(BaseModel):
    # Unknown keys are an error: a typo ("postion") must not silently mean "default".
    model_config = ConfigDict(extra="forbid", frozen=True)


class When(_Frozen):
    """Which queries a rule applies to (see the module docstring)."""

    query: QueryText | tuple[QueryText, ...] | None = Field(
        None, description="One query or a list, matched exactly after normalization."
    )
    any: bool = Field(False, description="true: every query.")
    contains: QueryText | None = Field(
        None, description="A term the query must contain as whole words."
    )

    @model_validator(mode="after")
    def _one_way(self) -> When:
        if isinstance(self.query, tuple) and not 1 <= len(self.query) <= MAX_QUERIES:
            raise ValueError(f"query: list 1 to {MAX_QUERIES} queries (got {len(self.query)})")
        if self.any and self.query is not None:
            raise ValueError("give either query or any: true, not both")
        if not self.any and self.query is None and self.contains is None:
            raise ValueError(
                'say which queries the rule is for: "query", "any": true or "contains"'
            )
        return self

    def queries(self) -> frozenset[str]:
        """The normalized queries of ``query`` (empty when not given)."""
        if self.query is None:
            return frozenset()
        listed = (self.query,) if isinstance(self.query, str) else self.query
        return frozenset(normalize(q) for q in listed)


class Match(_Frozen):
    """What a product must be for a boost or bury rule (every field given must hold)."""

    brand: tuple[Brand, ...] | None = Field(
        None, max_length=MAX_VALUES, description="Any of these brands (case-insensitive)."
    )
    category: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_CATEGORY_CHARS,
        description="A category path prefix, e.g. 'Tools > Power Tools'.",
    )
    in_stock: bool | None = None
    attributes: dict[AttrKey, tuple[AttrValue, ...]] | None = Field(
        None,
        max_length=MAX_VALUES,
        description="Keyword attributes: any of the values for each key.",
    )

    @model_validator(mode="after")
    def _something(self) -> Match:
        if not (self.brand or self.category or self.in_stock is not None or self.attributes):
            raise ValueError("match nothing? give brand, category, in_stock or attributes")
        for key, values in (self.attributes or {}).items():
            if not 1 <= len(values) <= MAX_VALUES:
                raise ValueError(f"attributes.{key}: list 1 to {MAX_VALUES} values")
        return self

    def filters(self) -> Filters:
        """The same condition as request filters (one semantics for both)."""
        return Filters(
            brand=self.brand or (),
            category=self.category,
            in_stock=self.in_stock,
            attributes=dict(self.attributes or {}),
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
        for key, values in (self.attributes or {}).items():
            parts.append(f"{key}={'|'.join(values)}")
        return ", ".join(parts)


class _Rule(_Frozen):
    name: str = Field("", max_length=MAX_NAME_CHARS, description="Shown in explain and history.")
    when: When


class PinRule(_Rule):
    """Show ``product`` at ``position`` (1-based) of the result list."""

    action: Literal["pin"]
    product: ProductId
    position: int = Field(ge=1, le=MAX_POSITION)


class HideRule(_Rule):
    """Never show ``products`` for the matching queries."""

    action: Literal["hide"]
    products: tuple[ProductId, ...] = Field(min_length=1, max_length=MAX_HIDDEN)


class MoveRule(_Rule):
    """Move the products that ``match`` ahead of the others (boost) or behind (bury)."""

    action: Literal["boost", "bury"]
    match: Match


#: One rule; the ``action`` field says which kind (errors name it in their ``loc``).
Rule = Annotated[PinRule | HideRule | MoveRule, Field(discriminator="action")]


class RuleSet(_Frozen):
    """A whole set of rules: the rule file, the body of ``PUT /v1/admin/rules`` and what
    each stored version holds. Rules are numbered from 0 in errors and explain."""

    rules: tuple[Rule, ...] = Field(default=(), max_length=MAX_RULES)


def _label(index: int, rule: PinRule | HideRule | MoveRule) -> str:
    return f"rule {index} {rule.name!r}" if rule.name else f"rule {index}"


@dataclass(frozen=True, slots=True)
class _Compiled:
    index: int
    rule: PinRule | HideRule | MoveRule
    queries: frozenset[str]
    contains: str | None
    any: bool

    def matches(self, texts: Iterable[str]) -> bool:
        for text in texts:
            if self.contains is not None and f" {self.contains} " not in f" {text} ":
                continue
            if self.any or not self.queries or text in self.queries:
                return True
        return False


@dataclass(frozen=True, slots=True)
class Rulebook:
    """A validated :class:`RuleSet` ready to apply (queries normalized once), with the
    ``version`` it was stored as (0: no rules were ever stored)."""

    version: int
    ruleset: RuleSet
    _compiled: tuple[_Compiled, ...] = ()

    @classmethod
    def build(cls, ruleset: RuleSet, version: int = 0) -> Rulebook:
        compiled = tuple(
            _Compiled(
                index=i,
                rule=rule,
                queries=rule.when.queries(),
                contains=normalize(rule.when.contains) if rule.when.contains else None,
                any=rule.when.any,
            )
            for i, rule in enumerate(ruleset.rules)
        )
        return cls(version=version, ruleset=ruleset, _compiled=compiled)

    @classmethod
    def parse(cls, document: Mapping[str, Any], version: int) -> Rulebook:
        """Validate a stored ``document`` (raises pydantic's ``ValidationError``)."""
        return cls.build(RuleSet.model_validate(document), version)

    def matching(self, queries: Iterable[str]) -> list[_Compiled]:
        """The rules that apply to any of ``queries`` (raw; normalized here), in order."""
        texts = {normalize(q) for q in queries}
        return [c for c in self._compiled if c.matches(texts)]


@dataclass(slots=True)
class MerchResult:
    """What :func:`apply_rules` did: the candidates to serve, best first; per row, what
    the rules did to that product (explain); and per matching rule, its outcome."""

    candidates: list[Candidate]
    notes: dict[int, list[str]] = field(default_factory=dict)
    outcomes: list[str] = field(default_factory=list)


def apply_rules(
    rulebook: Rulebook,
    candidates: Sequence[Candidate],
    table: ProductTable,
    filters: Filters,
    queries: Iterable[str],
) -> MerchResult:
    """Apply the rules of ``rulebook`` that match ``queries`` (the typed query and the
    text searched) to ``candidates``, the request's candidates after filtering, in
    served order. ``filters`` are the request's (a pinned product must pass them to be
    inserted); ``table`` is the serving snapshot's (its ``row_of`` has live products only).

    Returns a new list (``candidates`` and its items' scores are not changed; inserted
    products are new :class:`Candidate` objects). Order of effects, and why, in the
    module docstring. With no matching rule the list is returned as it came.
    """
    active = rulebook.matching(queries)
    out = list(candidates)
    if not active:
        return MerchResult(out)
    notes: defaultdict[int, list[str]] = defaultdict(list)
    outcomes: list[str] = []

    # 1. hide
    hidden: dict[int, str] = {}  # row -> label of the first rule hiding it
    for c in active:
        if isinstance(c.rule, HideRule):
            rows = [table.row_of[p] for p in c.rule.products if p in table.row_of]
            for row in rows:
                hidden.setdefault(row, _label(c.index, c.rule))
            shown = {x.row for x in out}
            outcomes.append(
                f"{_label(c.index, c.rule)}: hide {len(c.rule.products)} product(s)"
                f" ({sum(r in shown for r in rows)} among the candidates)"
            )
    if hidden:
        out = [x for x in out if x.row not in hidden]

    # 2. boost / bury: a stable sort by level
    moves = [(c.index, c.rule) for c in active if isinstance(c.rule, MoveRule)]
    if moves and out:
        rows_arr = np.fromiter((x.row for x in out), dtype=np.int64, count=len(out))
        level = np.zeros(len(out), dtype=np.int64)
        for index, rule in moves:
            label = _label(index, rule)
            try:
                hit = table.mask(rule.match.filters(), rows_arr)
            except InvalidFilterError as exc:
                outcomes.append(f"{label}: {rule.action} skipped ({exc})")
                continue
            level += hit.astype(np.int64) * (1 if rule.action == "boost" else -1)
            verb = "boosted" if rule.action == "boost" else "buried"
            for i in np.flatnonzero(hit).tolist():
                notes[out[i].row].append(f"{verb} by {label} ({rule.match.describe()})")
            outcomes.append(
                f"{label}: {rule.action} {rule.match.describe()} ({int(hit.sum())} candidates)"
            )
        order = sorted(range(len(out)), key=lambda i: -int(level[i]))  # stable
        out = [out[i] for i in order]

    # 3. pin
    by_row = {x.row: x for x in out}
    placed: dict[int, Candidate] = {}  # 0-based position -> candidate
    pinned: dict[int, str] = {}  # row -> label of the rule that pinned it
    pin_notes: dict[int, tuple[str, str]] = {}  # row -> (label, detail) for explain
    for c in active:
        if not isinstance(c.rule, PinRule):
            continue
        rule, label = c.rule, _label(c.index, c.rule)
        head = f"{label}: pin {rule.product} at {rule.position}"
        row = table.row_of.get(rule.product)
        if row is None:
            outcomes.append(f"{head}: not shown (no such product in this snapshot)")
            continue
        if row in hidden:
            outcomes.append(f"{head}: not shown (hidden by {hidden[row]})")
            continue
        if row in pinned:
            outcomes.append(f"{head}: ignored (already pinned by {pinned[row]})")
            continue
        cand = by_row.get(row)
        inserted = cand is None
        if cand is None:
            if not filters.is_empty() and not bool(table.mask(filters, np.array([row]))[0]):
                outcomes.append(f"{head}: not shown (excluded by the request's filters)")
                continue
            cand = Candidate(row=row)
        position = rule.position - 1
        while position in placed:  # an earlier pin holds it: the next free one
            position += 1
        placed[position] = cand
        pinned[row] = label
        detail = f"asked for {rule.position}" + (
            "; inserted: no leg retrieved it" if inserted else ""
        )
        pin_notes[row] = (label, detail)
        outcomes.append(f"{head}: {'inserted' if inserted else 'moved'}")
    if placed:
        rest = [x for x in out if x.row not in pinned]
        for position, cand in sorted(placed.items()):
            rest.insert(min(position, len(rest)), cand)  # past the end: last
        out = rest
        for at, x in enumerate(out, start=1):  # where each pinned product really landed
            if x.row in pin_notes:
                label, detail = pin_notes[x.row]
                notes[x.row].append(f"pinned at {at} by {label} ({detail})")
    return MerchResult(out, dict(notes), outcomes)


def _canonical(rule: PinRule | HideRule | MoveRule) -> str:
    return json.dumps(rule.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))


def describe_change(old: RuleSet, new: RuleSet) -> dict[str, Any]:
    """What changed from ``old`` to ``new``, for the audit log: the rules added and
    removed (by content: a rule that moved in the list is neither), as labels with
    their action, and the counts."""

    def labelled(rs: RuleSet) -> Counter[str]:
        return Counter(_canonical(r) for r in rs.rules)

    before, after = labelled(old), labelled(new)
    added, removed = after - before, before - after

    def summary(counter: Counter[str]) -> list[str]:
        out = []
        for text, count in counter.items():
            data = json.loads(text)
            what = data.get("product") or data.get("products") or data.get("match")
            name = f"{data['name']!r} " if data.get("name") else ""
            out.extend([f"{name}{data['action']} {json.dumps(what)}"] * count)
        return sorted(out)

    return {
        "rules_before": len(old.rules),
        "rules_after": len(new.rules),
        "added": summary(added),
        "removed": summary(removed),
    }
