"""What shapes one ranking: :class:`SearchParams`, and each list of choices, defined once.

A search is answered with one frozen :class:`SearchParams`: which legs run, how they
are fused, how deep each leg is asked, how the vector index is probed, and how the
reranker merges. The service builds it from its settings and the request's overrides
in one function (``api.service.SearchService.search_params``), so an answer can say
exactly what ran (``explain``) and evaluation can set or sweep any field
(``shopsearch eval --sweep nprobe=1,4,16``) without touching the service.

The choices (modes, fusions, rerank merges) are ``Literal`` types with a tuple of their
values beside them; the request schema, the settings and eval use these, never a copy.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from shopsearch.retrieval.fusion import FUSION_NAMES, FusionName

__all__ = [
    "FUSION_NAMES",
    "MAX_NPROBE",
    "MERGE_NAMES",
    "MODE_NAMES",
    "PARAM_NAMES",
    "FusionName",
    "MergeName",
    "ModeName",
    "SearchParams",
    "parse_param",
]

#: Which retrieval legs answer: both (fused), the vector index alone, or BM25 alone.
ModeName = Literal["hybrid", "dense", "lexical"]
MODE_NAMES: tuple[ModeName, ...] = get_args(ModeName)

#: How reranker scores merge with the first stage (``rerank/merge.py``): a weighted sum of
#: standardized scores, or a weighted RRF of the two orders.
MergeName = Literal["scores", "ranks"]
MERGE_NAMES: tuple[MergeName, ...] = get_args(MergeName)

#: Highest IVF lists one search may probe: FAISS clamps to the index's list count anyway
#: (at most a few thousand at the catalog sizes served); the bound keeps a request from
#: asking for a full scan of a million lists by mistake.
MAX_NPROBE = 4096


@dataclass(frozen=True, slots=True)
class SearchParams:
    """Every knob that shapes a ranking, with the server's defaults resolved.

    Build one with ``SearchService.search_params`` (settings + a request + overrides);
    change one with :meth:`with_overrides`. Construction checks every field and raises
    :class:`ValueError` naming the field, the value and what is allowed.
    """

    #: Legs that run (see :data:`ModeName`).
    mode: ModeName
    #: How the two legs' rankings combine (``retrieval/fusion.py``).
    fusion: FusionName
    #: BM25's share in the weighted fusions, in [0, 1] (``rrf`` ignores it).
    lexical_weight: float
    #: Candidates asked of each leg at first.
    leg_depth: int
    #: Widening limit of the leg depth when filters leave too few candidates.
    max_depth: int
    #: Whether the query is rewritten (units, spelling) before the stages search it.
    rewrite: bool
    #: Whether the head of the fused list is reranked (when a reranker is configured).
    rerank: bool
    #: Fused candidates the reranker scores.
    rerank_depth: int
    #: Weight of the reranker in the merge with the first stage, in [0, 1].
    rerank_weight: float
    #: How reranker scores merge with the first stage (see :data:`MergeName`).
    rerank_merge: MergeName
    #: IVF lists probed per query; None: the index's own (its build's, or the server's
    #: ``SHOPSEARCH_NPROBE``). An exact or Flat index ignores it.
    nprobe: int | None = None
    #: PQ candidates re-scored exactly, per result; None: the index's own. An exact or
    #: Flat index ignores it.
    refine_factor: int | None = None
    #: Search the dense leg exactly (a scan of the stored vectors) instead of through the
    #: approximate index: the oracle of evaluation's ``dense-exact``.
    exact_dense: bool = False
    #: Answer with the query's result set only: lexical matches and dense neighbours
    #: above the model's threshold (``retrieval/match_set.py``); false: every fused
    #: candidate, as before result sets were defined (for comparison in evaluation).
    match_only: bool = True

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODE_NAMES)
        _choice("fusion", self.fusion, FUSION_NAMES)
        _choice("rerank_merge", self.rerank_merge, MERGE_NAMES)
        for name in ("lexical_weight", "rerank_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        for name in ("leg_depth", "max_depth", "rerank_depth"):
            _integer(name, getattr(self, name))
        if self.nprobe is not None:
            _integer("nprobe", self.nprobe, high=MAX_NPROBE)
        if self.refine_factor is not None:
            _integer("refine_factor", self.refine_factor)
        for name in ("rewrite", "rerank", "exact_dense", "match_only"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")

    def with_overrides(self, overrides: Mapping[str, object]) -> SearchParams:
        """A copy with ``overrides`` (field name -> value) applied; checked as at
        construction.

        Raises:
            ValueError: a name that is not a field (the message lists the fields), or a
                value out of its field's range.
        """
        unknown = sorted(set(overrides) - set(PARAM_NAMES))
        if unknown:
            raise ValueError(
                f"unknown search parameter(s) {unknown}; choose from {', '.join(PARAM_NAMES)}"
            )
        return dataclasses.replace(self, **overrides)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON values (for reports and logs)."""
        return dataclasses.asdict(self)


#: The field names of :class:`SearchParams`, in order.
PARAM_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SearchParams))


def _choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def _integer(name: str, value: object, *, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")


def parse_param(name: str, text: str) -> object:
    """``text`` as a value of the :class:`SearchParams` field ``name`` (what a command
    line gives: ``"4"`` for ``nprobe``, ``"0.3"`` for a weight, ``"true"`` for a flag,
    ``"rrf"`` for ``fusion``, ``"none"`` for an optional field's default).

    Only the type is checked here; the range is checked when the value is applied
    (:meth:`SearchParams.with_overrides`).

    Raises:
        ValueError: an unknown field, or text that is not a value of its type, naming both.
    """
    hints = typing.get_type_hints(SearchParams)
    if name not in hints:
        raise ValueError(f"unknown search parameter {name!r}; choose from {', '.join(PARAM_NAMES)}")
    kind = hints[name]
    text = text.strip()
    optional = get_origin(kind) in (typing.Union, types.UnionType) and type(None) in get_args(kind)
    if optional:
        if text.lower() == "none":
            return None
        kind = next(a for a in get_args(kind) if a is not type(None))
    if get_origin(kind) is Literal:
        choices = get_args(kind)
        if text not in choices:
            raise ValueError(f"{name} must be one of {', '.join(choices)}; got {text!r}")
        return text
    if kind is bool:
        if text.lower() not in ("true", "false"):
            raise ValueError(f"{name} is true or false, got {text!r}")
        return text.lower() == "true"
    try:
        return int(text) if kind is int else float(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"{name} must be {expected}, got {text!r}") from None
