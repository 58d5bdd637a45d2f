"""Cut a query's fused candidates down to its result set (:mod:`retrieval.match_set`)."""

from __future__ import annotations

from dataclasses import dataclass

from shopsearch.retrieval.filters import Filters, ProductTable
from shopsearch.retrieval.lexical_index import LexicalIndex
from shopsearch.retrieval.types import Candidate

__all__ = ["ResultSet", "restrict_to_matches"]


@dataclass(frozen=True, slots=True)
class ResultSet:
    """The candidates that match, in their given order, and how many products match.

    ``total`` counts every lexical match of the index (filters included), retrieved or
    not, plus the dense matches among the candidates that are not lexical matches: a
    dense neighbour beyond the retrieval depth is not counted (the dense leg's depth
    bounds what it can vouch for).
    """

    candidates: list[Candidate]
    total: int


def restrict_to_matches(
    candidates: list[Candidate],
    *,
    query: str,
    table: ProductTable,
    lexical: LexicalIndex,
    filters: Filters,
    dense_threshold: float | None,
) -> ResultSet:
    """The members of ``query``'s result set among ``candidates`` (already filtered).

    A candidate stays when the lexical index calls it a match
    (:meth:`LexicalIndex.match_set`), or when its dense-leg similarity is at least
    ``dense_threshold`` (None: no dense matches, the snapshot has no calibration).
    Raises whatever the lexical index raises (:class:`LexicalIndexError`); the caller
    decides how to degrade.
    """
    ids = [table.products[c.row].id for c in candidates]
    found = lexical.match_set(query, ids, filters=None if filters.is_empty() else filters)
    kept: list[Candidate] = []
    dense_only = 0
    for cand, product_id in zip(candidates, ids, strict=True):
        if product_id in found.ids:
            kept.append(cand)
        elif (
            dense_threshold is not None
            and cand.dense_score is not None
            and cand.dense_score >= dense_threshold
        ):
            kept.append(cand)
            dense_only += 1
    return ResultSet(candidates=kept, total=found.total + dense_only)
