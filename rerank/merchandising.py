"""Merchandising rules: pin, boost, bury and hide products for chosen queries.

A shop's merchandiser overrides relevance for some queries: "the house-brand drill first
for *drill*", "out-of-stock products last everywhere", "never show P123 for *paint*".
This module is the pure part: matching a query and :func:`apply_rules`, which
re-arranges a request's candidates; the rule model (validated, with errors that name the
rule's index and field) is :mod:`rerank.merch_rule_model`. Storage, versions and the audit log are in
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

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shopsearch.rerank.merch_rule_model import (
    HideRule,
    MoveRule,
    PinRule,
    RuleSet,
    WhenAny,
    WhenContains,
    WhenQuery,
    normalize,
)
from shopsearch.retrieval.filters import Filters, InvalidFilterError, ProductTable
from shopsearch.retrieval.types import Candidate

__all__ = ["MerchResult", "Rulebook", "apply_rules"]


def _queries(when: WhenAny | WhenQuery | WhenContains) -> frozenset[str]:
    """The normalized queries a ``when`` names (empty: it names none, any will do)."""
    if not isinstance(when, WhenQuery):
        return frozenset()
    listed = [when.query] if isinstance(when.query, str) else when.query
    return frozenset(normalize(q) for q in listed)


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
    #: Rules by each normalized query they name, and the rules that name none (any,
    #: contains): a search looks up its own query instead of testing every rule.
    _by_query: Mapping[str, tuple[_Compiled, ...]] = field(default_factory=dict)
    _general: tuple[_Compiled, ...] = ()

    @classmethod
    def build(cls, ruleset: RuleSet, version: int = 0) -> Rulebook:
        by_query: dict[str, list[_Compiled]] = {}
        general: list[_Compiled] = []
        for i, rule in enumerate(ruleset.rules):
            compiled = _Compiled(
                index=i,
                rule=rule,
                queries=_queries(rule.when),
                contains=normalize(rule.when.contains) if rule.when.contains else None,
                any=isinstance(rule.when, WhenAny),
            )
            for query in compiled.queries:
                by_query.setdefault(query, []).append(compiled)
            if not compiled.queries:
                general.append(compiled)
        return cls(
            version=version,
            ruleset=ruleset,
            _by_query={q: tuple(rules) for q, rules in by_query.items()},
            _general=tuple(general),
        )

    @classmethod
    def parse(cls, document: Mapping[str, Any], version: int) -> Rulebook:
        """Validate a stored ``document`` (raises pydantic's ``ValidationError``)."""
        return cls.build(RuleSet.model_validate(document), version)

    def matching(self, queries: Iterable[str]) -> list[_Compiled]:
        """The rules that apply to any of ``queries`` (raw; normalized here), in rule
        order."""
        texts = {normalize(q) for q in queries}
        found = {c.index: c for c in self._general if c.matches(texts)}
        for text in texts:
            for c in self._by_query.get(text, ()):
                if c.matches(texts):
                    found[c.index] = c
        return [found[i] for i in sorted(found)]


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
    result = MerchResult(list(candidates))
    if not active:
        return result
    hides = [(c.index, c.rule) for c in active if isinstance(c.rule, HideRule)]
    moves = [(c.index, c.rule) for c in active if isinstance(c.rule, MoveRule)]
    pins = [(c.index, c.rule) for c in active if isinstance(c.rule, PinRule)]
    hidden = _hide(result, hides, table)
    _move(result, moves, table)
    _pin(result, pins, table, filters, hidden)
    return result


def _note(result: MerchResult, row: int, text: str) -> None:
    result.notes.setdefault(row, []).append(text)


def _hide(
    result: MerchResult, rules: Sequence[tuple[int, HideRule]], table: ProductTable
) -> dict[int, str]:
    """Remove the hidden products; returns row -> the first rule hiding it."""
    hidden: dict[int, str] = {}
    shown = {x.row for x in result.candidates}
    for index, rule in rules:
        rows = [table.row_of[p] for p in rule.products if p in table.row_of]
        for row in rows:
            hidden.setdefault(row, _label(index, rule))
        result.outcomes.append(
            f"{_label(index, rule)}: hide {len(rule.products)} product(s)"
            f" ({sum(r in shown for r in rows)} among the candidates)"
        )
    if hidden:
        result.candidates = [x for x in result.candidates if x.row not in hidden]
    return hidden


def _move(result: MerchResult, rules: Sequence[tuple[int, MoveRule]], table: ProductTable) -> None:
    """Boost and bury: +1/-1 a level per rule matched, then a stable sort by level."""
    out = result.candidates
    if not rules or not out:
        return
    rows = np.fromiter((x.row for x in out), dtype=np.int64, count=len(out))
    level = np.zeros(len(out), dtype=np.int64)
    for index, rule in rules:
        label = _label(index, rule)
        try:
            hit = table.mask(rule.match.filters(), rows)
        except InvalidFilterError as exc:  # an attribute this catalog does not have
            result.outcomes.append(f"{label}: {rule.action} skipped ({exc})")
            continue
        level += hit.astype(np.int64) * (1 if rule.action == "boost" else -1)
        what = rule.match.describe()
        note = f"{'boosted' if rule.action == 'boost' else 'buried'} by {label} ({what})"
        for i in np.flatnonzero(hit).tolist():
            _note(result, out[i].row, note)
        result.outcomes.append(f"{label}: {rule.action} {what} ({int(hit.sum())} candidates)")
    order = sorted(range(len(out)), key=lambda i: -int(level[i]))  # stable: ties keep order
    result.candidates = [out[i] for i in order]


def _pin(
    result: MerchResult,
    rules: Sequence[tuple[int, PinRule]],
    table: ProductTable,
    filters: Filters,
    hidden: Mapping[int, str],
) -> None:
    """Put each pinned product at its position (see the module docstring)."""
    if not rules:
        return
    by_row = {x.row: x for x in result.candidates}
    placed: dict[int, Candidate] = {}  # 0-based position -> candidate
    pinned: dict[int, tuple[str, str]] = {}  # row -> (label, detail) of the rule that won
    for index, rule in rules:
        label = _label(index, rule)
        head = f"{label}: pin {rule.product} at {rule.position}"
        row = table.row_of.get(rule.product)
        if row is None:
            result.outcomes.append(f"{head}: not shown (no such product in this snapshot)")
            continue
        if row in hidden:
            result.outcomes.append(f"{head}: not shown (hidden by {hidden[row]})")
            continue
        if row in pinned:
            result.outcomes.append(f"{head}: ignored (already pinned by {pinned[row][0]})")
            continue
        cand = by_row.get(row)
        inserted = cand is None
        if cand is None:
            if not filters.is_empty() and not bool(table.mask(filters, np.array([row]))[0]):
                result.outcomes.append(f"{head}: not shown (excluded by the request's filters)")
                continue
            cand = Candidate(row=row)
        position = rule.position - 1
        while position in placed:  # an earlier pin holds it: the next free one
            position += 1
        placed[position] = cand
        detail = "; inserted: no leg retrieved it" if inserted else ""
        pinned[row] = (label, f"asked for {rule.position}{detail}")
        result.outcomes.append(f"{head}: {'inserted' if inserted else 'moved'}")
    if not placed:
        return
    out = [x for x in result.candidates if x.row not in pinned]
    for position, cand in sorted(placed.items()):
        out.insert(min(position, len(out)), cand)  # past the end: last
    result.candidates = out
    for at, x in enumerate(out, start=1):  # where each pinned product really landed
        if x.row in pinned:
            label, detail = pinned[x.row]
            _note(result, x.row, f"pinned at {at} by {label} ({detail})")
