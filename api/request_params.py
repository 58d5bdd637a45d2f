"""The :class:`~retrieval.search_params.SearchParams` a request is answered with.

:func:`resolve_params` is the one place the server's defaults (``Settings``, the default
fusion, whether a reranker is configured) meet a request's fields and evaluation's
overrides; ``SearchService.search_params`` calls it. Pure: it reads its arguments only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import cast

from shopsearch.api.schemas import MAX_RESULT_WINDOW, SearchRequest
from shopsearch.api.settings import Settings
from shopsearch.retrieval.fusion import FusionChoice
from shopsearch.retrieval.search_params import FusionName, SearchParams

__all__ = ["request_overrides", "resolve_params"]


def request_overrides(request: SearchRequest) -> dict[str, object]:
    """The :class:`SearchParams` fields ``request`` sets (its fields that are not None;
    ``rewrite: true`` sets nothing: it asks for what the server is configured to do)."""
    asked = {
        "mode": request.mode,
        "fusion": request.fusion,
        "lexical_weight": request.lexical_weight,
        "leg_depth": request.depth,
        "rewrite": False if request.rewrite is False else None,
        "rerank": request.rerank,
        "rerank_depth": request.rerank_depth,
        "rerank_weight": request.rerank_weight,
        "rerank_merge": request.rerank_merge,
        "nprobe": request.nprobe,
    }
    return {name: value for name, value in asked.items() if value is not None}


def resolve_params(
    settings: Settings,
    default_fusion: FusionChoice,
    request: SearchRequest,
    overrides: Mapping[str, object] | None = None,
    *,
    reranker: bool,
) -> SearchParams:
    """What ``request`` is answered with: the server's defaults (``settings``,
    ``default_fusion``, rerank when ``reranker`` is configured, a leg depth that reaches
    the requested page), then the request's fields that are set, then ``overrides``
    (:class:`SearchParams` field names; evaluation's configurations).

    A fusion named without a ``lexical_weight`` gets ``settings.lexical_weight``: the
    default fusion's own weight goes only with the default method.

    Raises:
        ValueError: an unknown name or a value out of range in ``overrides``.
    """
    changes = request_overrides(request)
    changes.update(overrides or {})
    named_fusion = changes.get("fusion") is not None
    need = min(request.page * request.size, MAX_RESULT_WINDOW)
    defaults = SearchParams(
        mode="hybrid",
        fusion=cast(FusionName, default_fusion.method.value),
        lexical_weight=settings.lexical_weight if named_fusion else default_fusion.lexical_weight,
        leg_depth=max(settings.leg_depth, need),
        max_depth=settings.max_depth,
        rewrite=settings.units or settings.spelling,
        rerank=reranker,
        rerank_depth=settings.rerank_depth,
        rerank_weight=settings.rerank_weight,
        rerank_merge=settings.rerank_merge,
        nprobe=settings.nprobe,
        refine_factor=settings.refine_factor,
    )
    return defaults.with_overrides(changes)
