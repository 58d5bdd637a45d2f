"""Merchandising-rule admin endpoints, as an ``APIRouter`` the app mounts.

- ``GET /v1/admin/rules``: the serving rule set and its version (``?version=N``: an
  older one; 404 when it does not exist).
- ``PUT /v1/admin/rules``: replace the whole set with the body's (``{"rules": [...]}``,
  see :mod:`rerank.merchandising`). A bad rule is a 422 whose ``loc`` names the rule's
  index and field (``["body", "rules", 3, "pin", "position"]``) and nothing is stored.
  Otherwise it is stored as the next version and serves from the next search on; the
  answer gives the version, what changed, and warnings for rules that name products or
  attributes the serving snapshot does not have (stored anyway: rules outlive snapshots).
- ``GET /v1/admin/rules/history``: the audit log, newest first.

Who made a change is the ``X-Shopsearch-Actor`` header (default ``"admin"``), written to
the audit log with the time; the bearer token never is. Storage and versions:
:mod:`indexer.merch_rules`.
"""

# No `from __future__ import annotations`: FastAPI must see the real types of the
# endpoint parameters, which refer to dependencies defined inside merch_router().

import logging
import re
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from pydantic import BaseModel, Field

from shopsearch.api.schemas import error_responses
from shopsearch.api.service import SearchService
from shopsearch.indexer.merch_rules import MAX_ACTOR_CHARS, RulesError, RulesVersion
from shopsearch.rerank.merch_rule_model import (
    HideRule,
    MoveRule,
    PinRule,
    Rule,
    RuleSet,
    describe_change,
)
from shopsearch.rerank.merchandising import Rulebook
from shopsearch.retrieval.filters import ProductTable

__all__ = ["DEFAULT_ACTOR", "merch_router", "rule_warnings"]

log = logging.getLogger(__name__)

DEFAULT_ACTOR = "admin"
#: Audit entries one history request may ask for.
MAX_HISTORY = 1_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class RulesOut(BaseModel):
    """A stored rule set."""

    version: int = Field(description="0: no rules were ever stored.")
    created_at: str = Field(description="When it was stored (ISO 8601, UTC); empty for 0.")
    actor: str = Field(description="Who stored it (X-Shopsearch-Actor).")
    index_version: str | None = Field(
        None, description="The snapshot that was serving when it was stored."
    )
    rules: list[Rule]


class RulesStored(BaseModel):
    """The answer to a ``PUT``: the new version and what changed."""

    version: int
    previous: int
    change: dict[str, Any] = Field(
        description="rules_before, rules_after, and the rules added and removed."
    )
    warnings: list[str] = Field(
        description="Rules naming products or attributes the serving snapshot lacks."
    )


def rule_warnings(ruleset: RuleSet, table: ProductTable) -> list[str]:
    """What in ``ruleset`` refers to products or attributes ``table`` does not have: such
    a rule does nothing on this snapshot (it may on a later one, so it is only a warning)."""
    warnings: list[str] = []
    for i, rule in enumerate(ruleset.rules):
        if isinstance(rule, PinRule) and rule.product not in table.row_of:
            warnings.append(f"rules[{i}]: product {rule.product!r} is not in the catalog")
        elif isinstance(rule, HideRule):
            missing = [p for p in rule.products if p not in table.row_of]
            if missing:
                shown = ", ".join(repr(p) for p in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                warnings.append(f"rules[{i}]: products {shown}{more} are not in the catalog")
        elif isinstance(rule, MoveRule):
            unknown = [k for k in rule.match.attributes if k not in table.attributes]
            if unknown:
                warnings.append(
                    f"rules[{i}]: the catalog has no attribute {', '.join(unknown)}; "
                    f"it has: {', '.join(table.attributes) or 'none'}"
                )
    return warnings


def _actor(header: str | None) -> str:
    """The audit log's actor: the header without control characters, else the default."""
    actor = _CONTROL.sub("?", header or "").strip()
    return actor or DEFAULT_ACTOR


def _out(stored: RulesVersion[Rulebook]) -> RulesOut:
    return RulesOut(
        version=stored.version,
        created_at=stored.created_at,
        actor=stored.actor,
        index_version=stored.index_version,
        rules=list(stored.value.ruleset.rules),
    )


def merch_router(
    get_service: Callable[[], SearchService], admin_dependency: Callable[..., Any]
) -> APIRouter:
    """The rule endpoints over ``get_service().merch`` (the service's rule store), each
    guarded by ``admin_dependency`` (the app's bearer-token check)."""
    router = APIRouter(tags=["merchandising"], dependencies=[Depends(admin_dependency)])
    errors = error_responses(400, 401, 404, 413, 503)

    @router.get("/v1/admin/rules", response_model=RulesOut, responses=errors)
    def get_rules(
        svc: Annotated[SearchService, Depends(get_service)],
        version: Annotated[
            int | None, Query(ge=0, le=10**9, description="An older version; default: serving.")
        ] = None,
    ) -> RulesOut:
        """The serving rule set (or the stored ``version``)."""
        try:
            stored = svc.merch.current() if version is None else svc.merch.get(version)
        except RulesError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        return _out(stored)

    @router.put("/v1/admin/rules", response_model=RulesStored, responses=errors)
    def put_rules(
        ruleset: RuleSet,
        svc: Annotated[SearchService, Depends(get_service)],
        x_shopsearch_actor: Annotated[
            str | None,
            Header(
                max_length=MAX_ACTOR_CHARS,
                description=f"Who makes the change, for the audit log (default {DEFAULT_ACTOR!r}).",
            ),
        ] = None,
    ) -> RulesStored:
        """Replace the whole rule set; it serves from the next search on."""
        snap = svc.snapshot if svc.ready else None
        try:
            stored = svc.merch.put(
                ruleset.model_dump(mode="json", exclude_defaults=True),
                actor=_actor(x_shopsearch_actor),
                describe=lambda old, new: describe_change(old.ruleset, new.ruleset),
                index_version=snap.version if snap is not None else None,
            )
        except OSError as exc:
            log.exception("could not store the rules")
            raise HTTPException(
                status_code=503, detail=f"the rules could not be stored: {exc.strerror}"
            ) from exc
        return RulesStored(
            version=stored.version,
            previous=stored.previous,
            change=stored.change,
            warnings=rule_warnings(ruleset, snap.table) if snap is not None else [],
        )

    @router.get("/v1/admin/rules/history", responses=errors)
    def rules_history(
        svc: Annotated[SearchService, Depends(get_service)],
        limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = 100,
    ) -> list[dict[str, Any]]:
        """The audit log, newest first: who changed the rules, when, to which version,
        and what changed."""
        return svc.merch.history(limit)

    return router
