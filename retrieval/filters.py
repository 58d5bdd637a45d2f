"""Filters: what a request may restrict on, and the pure functions that apply them.

A filter is checked against a :class:`ProductTable` (column arrays of a snapshot's
products) as one vectorised NumPy mask, so applying it to thousands of candidates
costs microseconds and can never disagree with itself between legs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.types import Product, ShopsearchError

__all__ = [
    "BUILTIN_FILTER_FIELDS",
    "Filters",
    "InvalidFilterError",
    "ProductTable",
    "category_matches",
]

#: Fields every catalog can be filtered on; any keyword attribute of the catalog is added.
BUILTIN_FILTER_FIELDS = ("brand", "category", "price", "in_stock")


class InvalidFilterError(ShopsearchError):
    """A filter names a field the snapshot does not have, or has an impossible value."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(f"{field_name}: {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True, slots=True)
class Filters:
    """Restrictions on the products a search may return (all must hold).

    ``brand`` and attribute values match any of the listed values, case-insensitively;
    ``category`` matches a path prefix level by level (``"Tools > Power Tools"`` matches
    ``"Tools > Power Tools > Drills"`` but not ``"Tools > Power Tools Accessories"``);
    the price range is inclusive and excludes products without a price.
    """

    brand: tuple[str, ...] = ()
    category: str | None = None
    price_min: float | None = None
    price_max: float | None = None
    in_stock: bool | None = None
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (
            self.price_min is not None
            and self.price_max is not None
            and self.price_min > self.price_max
        ):
            raise InvalidFilterError(
                "price",
                f"min ({self.price_min}) is greater than max ({self.price_max}); swap them",
            )

    def is_empty(self) -> bool:
        """True when the filters restrict nothing."""
        return (
            not self.brand
            and self.category is None
            and self.price_min is None
            and self.price_max is None
            and self.in_stock is None
            and not any(self.attributes.values())
        )


def _split_path(path: str) -> list[str]:
    return [part.strip().casefold() for part in path.split(">") if part.strip()]


def category_matches(category: str, prefix: str) -> bool:
    """True when ``prefix``'s levels are the first levels of ``category`` (case-insensitive)."""
    want = _split_path(prefix)
    have = _split_path(category)
    return have[: len(want)] == want


class ProductTable:
    """Column arrays over a snapshot's products, row-aligned with the vector index.

    Built once when a snapshot loads; read-only afterwards (shared between request threads).
    """

    def __init__(self, products: Sequence[Product]) -> None:
        self.products: tuple[Product, ...] = tuple(products)
        self.row_of: dict[str, int] = {p.id: i for i, p in enumerate(self.products)}
        n = len(self.products)
        self.brand = np.array([p.brand.casefold() for p in self.products], dtype=object)
        self.category = np.array([p.category for p in self.products], dtype=object)
        self.price = np.array(
            [np.nan if p.price is None else p.price for p in self.products], dtype=np.float64
        )
        # in_stock: 1 true, 0 false, -1 unknown
        self.in_stock = np.array(
            [-1 if p.in_stock is None else int(p.in_stock) for p in self.products], dtype=np.int8
        )
        keys = sorted({k for p in self.products for k in p.attributes})
        self.attributes: dict[str, npt.NDArray[np.object_]] = {
            key: np.array(
                [p.attributes.get(key, "").casefold() for p in self.products], dtype=object
            )
            for key in keys
        }
        self.size = n

    @property
    def filter_fields(self) -> tuple[str, ...]:
        """Every field this table can filter on: the built-in ones and its attributes."""
        return BUILTIN_FILTER_FIELDS + tuple(self.attributes)

    def check(self, filters: Filters) -> None:
        """Raise :class:`InvalidFilterError` for an attribute this catalog does not have."""
        for key in filters.attributes:
            if key not in self.attributes:
                valid = ", ".join(self.filter_fields)
                raise InvalidFilterError(
                    f"filters.{key}", f"unknown filter field; valid fields are: {valid}"
                )

    def mask(
        self, filters: Filters, rows: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.bool_]:
        """Boolean mask of the rows (all rows when ``rows`` is None) that pass ``filters``.

        Raises :class:`InvalidFilterError` for an unknown attribute.
        """
        self.check(filters)
        idx: npt.NDArray[np.int64] | slice = slice(None) if rows is None else rows
        count = self.size if rows is None else len(rows)
        keep = np.ones(count, dtype=bool)
        if filters.brand:
            wanted = {b.casefold() for b in filters.brand}
            keep &= np.fromiter((b in wanted for b in self.brand[idx]), dtype=bool, count=count)
        if filters.category is not None:
            prefix = filters.category
            keep &= np.fromiter(
                (category_matches(c, prefix) for c in self.category[idx]), dtype=bool, count=count
            )
        price = self.price[idx]
        if filters.price_min is not None:
            keep &= price >= filters.price_min  # NaN compares False: no price, no match
        if filters.price_max is not None:
            keep &= price <= filters.price_max
        if filters.in_stock is not None:
            keep &= self.in_stock[idx] == int(filters.in_stock)
        for key, values in filters.attributes.items():
            if values:
                wanted = {v.casefold() for v in values}
                col = self.attributes[key][idx]
                keep &= np.fromiter((v in wanted for v in col), dtype=bool, count=count)
        return keep
