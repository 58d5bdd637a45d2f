"""Snapshot and catalog admin endpoints, as an ``APIRouter`` the app mounts.

- ``POST /v1/admin/reload``: load the snapshot ``CURRENT`` names now (instead of waiting
  for the app's watcher thread).
- ``GET /v1/admin/snapshots``: the stored snapshots, which one is current.
- ``POST /v1/admin/products``: upsert a JSON list of products (:class:`ProductIn`, at
  most :data:`MAX_UPSERTS`) into the serving snapshot; ``DELETE
  /v1/admin/products/{id}``: delete one. Both answer the update report, or a 422 naming
  every rejected product (the rest was applied).
- ``POST /v1/admin/promote/{version}``: load a snapshot, then make it ``CURRENT``.
- ``POST /v1/admin/rollback``: serve again the snapshot that served before this one.

Every one is guarded by the app's bearer-token dependency. Domain errors (``SnapshotError``,
``UpdateError``, ``LexicalIndexError``) are left to the app's exception handlers
(api/app.py), which turn them into 409, 400 and 503.
"""

# No `from __future__ import annotations`: FastAPI must see the real types of the
# endpoint parameters, which refer to dependencies defined inside admin_router().

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from shopsearch.api.schemas import NOT_BLANK, error_responses
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.indexer.snapshot import SnapshotStore
from shopsearch.indexer.updates import UpdateReport
from shopsearch.retrieval.types import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ATTRIBUTE_VALUE_CHARS,
    MAX_BRAND_CHARS,
    MAX_CATEGORY_CHARS,
    MAX_DESCRIPTION_CHARS,
    MAX_ID_CHARS,
    MAX_IMAGE_URL_CHARS,
    MAX_TITLE_CHARS,
    Product,
)

__all__ = ["MAX_UPSERTS", "ProductIn", "admin_router"]

AttributeKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ATTRIBUTE_KEY_CHARS)]
AttributeValue = Annotated[str, StringConstraints(max_length=MAX_ATTRIBUTE_VALUE_CHARS)]


class ProductIn(BaseModel):
    """A product to upsert through ``POST /v1/admin/products``. Field lengths are capped
    by the same limits as catalog rows (``retrieval.types.MAX_*_CHARS``): longer is a 422."""

    # strict: a JSON false is not a price of 0, nor 1 an in-stock flag.
    model_config = ConfigDict(extra="forbid", strict=True)

    # The pattern documents what _not_blank checks (with a better message than a pattern's).
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS, json_schema_extra={"pattern": NOT_BLANK})
    title: str = Field(
        min_length=1, max_length=MAX_TITLE_CHARS, json_schema_extra={"pattern": NOT_BLANK}
    )
    description: str = Field("", max_length=MAX_DESCRIPTION_CHARS)
    brand: str = Field("", max_length=MAX_BRAND_CHARS)
    category: str = Field(
        "", max_length=MAX_CATEGORY_CHARS, description="Category path, e.g. 'Tools > Power Tools'."
    )
    price: float | None = Field(None, ge=0, allow_inf_nan=False)
    in_stock: bool | None = None
    image_url: str = Field("", max_length=MAX_IMAGE_URL_CHARS)
    attributes: dict[AttributeKey, AttributeValue] = Field(default_factory=dict)

    @field_validator("id", "title")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank (whitespace only); send the product's text")
        return value

    def to_product(self) -> Product:
        return Product(**self.model_dump())


#: Products one ``POST /v1/admin/products`` may carry (bigger batches: `shopsearch update`).
MAX_UPSERTS = 10_000


def _update_response(
    report: UpdateReport, index_version: str, ids: Sequence[str] = ()
) -> JSONResponse:
    """200 with the report, or 422 naming every rejected product (the rest was applied).

    The 422's ``detail`` has the shape of every other 422 (a list of ``{loc, msg, type}``,
    ``loc`` = ``["body", <index in the request>, "id"]``), so one client-side handler reads
    them all; the report's fields stand beside it."""
    body: dict[str, Any] = {"index_version": index_version, **report.to_dict()}
    if report.rejected:
        position = {pid: i for i, pid in enumerate(ids)}
        body["detail"] = [
            {
                "loc": ["body", position[pid], "id"] if pid in position else ["body"],
                "msg": f"product {pid!r} rejected and not applied ({reason}); the others were",
                "type": "value_error",
            }
            for pid, reason in report.rejected
        ]
        return JSONResponse(status_code=422, content=body)
    return JSONResponse(content=body)


_ADMIN_ERRORS = error_responses(400, 401, 404, 409, 413, 503)


def admin_router(
    get_service: Callable[[], SearchService],
    admin_dependency: Callable[..., Any],
    settings: Settings,
    redact: Callable[[str], str],
) -> APIRouter:
    """The admin endpoints over ``get_service()`` and the snapshots in
    ``settings.index_dir``, each guarded by ``admin_dependency`` (the app's bearer-token
    check). ``redact`` strips the server's paths from the reasons a rollback reports."""
    router = APIRouter(dependencies=[Depends(admin_dependency)])

    @router.post("/v1/admin/reload", responses=_ADMIN_ERRORS)
    def admin_reload(svc: Annotated[SearchService, Depends(get_service)]) -> dict[str, Any]:
        """Load the snapshot CURRENT names now (instead of waiting for the watcher)."""
        changed = svc.reload_if_changed()
        return {"reloaded": changed, "index_version": svc.snapshot.version}

    @router.get("/v1/admin/snapshots", responses=_ADMIN_ERRORS)
    def admin_snapshots() -> list[dict[str, Any]]:
        return [
            {
                "version": s.version,
                "created_at": s.created_at,
                "products": s.products,
                "current": s.current,
            }
            for s in SnapshotStore(settings.index_dir).list_snapshots()
        ]

    @router.post("/v1/admin/products", responses=_ADMIN_ERRORS)
    def admin_upsert_products(
        products: list[ProductIn],
        svc: Annotated[SearchService, Depends(get_service)],
    ) -> JSONResponse:
        """Upsert products into the serving snapshot (both legs), persisted and served at
        once. A price or stock change is applied without re-encoding. 422 lists the
        products that were rejected (and not applied); the rest was."""
        if len(products) > MAX_UPSERTS:
            raise HTTPException(
                status_code=413,
                detail=f"{len(products)} products in one request; send at most {MAX_UPSERTS} "
                "(or use `shopsearch update` for bulk changes)",
            )
        report = svc.apply_updates([p.to_product() for p in products], [])
        return _update_response(report, svc.snapshot.version, [p.id for p in products])

    @router.delete("/v1/admin/products/{product_id}", responses=_ADMIN_ERRORS)
    def admin_delete_product(
        product_id: str, svc: Annotated[SearchService, Depends(get_service)]
    ) -> JSONResponse:
        """Delete a product from the serving snapshot (both legs); 404 when it has none."""
        report = svc.apply_updates([], [product_id])
        if report.not_found:
            raise HTTPException(status_code=404, detail=f"no product with id {product_id!r}")
        return _update_response(report, svc.snapshot.version)

    @router.post("/v1/admin/promote/{version}", responses=_ADMIN_ERRORS)
    def admin_promote(
        version: str, svc: Annotated[SearchService, Depends(get_service)]
    ) -> dict[str, Any]:
        svc.load(version)  # load first: a snapshot that does not load is never promoted
        svc.store.promote(version)  # CURRENT, and the alias of an Elasticsearch snapshot
        return {"index_version": version}

    @router.post("/v1/admin/rollback", responses=_ADMIN_ERRORS)
    def admin_rollback(svc: Annotated[SearchService, Depends(get_service)]) -> dict[str, Any]:
        """Serve again the snapshot that served before this one (promotion history).

        The target is loaded (and served) before ``CURRENT`` switches to it; one that
        does not load is passed over (listed in ``skipped``); 409 when none loads, with
        ``CURRENT`` and the serving snapshot unchanged."""
        result = svc.store.rollback(load=svc.load)
        return {
            "index_version": result.version,
            "previous": result.previous,
            "skipped": [{"version": v, "reason": redact(why)} for v, why in result.skipped],
        }

    return router
