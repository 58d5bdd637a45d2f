"""Filters: the vectorised mask agrees with the one-product oracle, and never leaks."""

from __future__ import annotations

import numpy as np
import pytest

from shopsearch.retrieval.filters import Filters, InvalidFilterError, ProductTable, category_matches
from shopsearch.retrieval.lexical_index import filters_hold
from shopsearch.retrieval.types import Product


def test_category_prefix_is_level_by_level() -> None:
    assert category_matches("Tools > Power Tools > Drills", "tools > power tools")
    assert category_matches("Tools > Power Tools > Drills", "Tools")
    assert not category_matches("Tools > Power Tools Accessories", "Tools > Power Tools")
    assert not category_matches("Tools", "Tools > Power Tools")


def test_inverted_price_range_is_rejected() -> None:
    with pytest.raises(InvalidFilterError, match="swap them") as info:
        Filters(price_min=10, price_max=5)
    assert info.value.field == "price"


def test_mask_matches_oracle_on_sample_catalog(sample_products: list[Product]) -> None:
    table = ProductTable(sample_products)
    brands = sorted({p.brand for p in sample_products})[:3]
    cases = [
        Filters(brand=(brands[0],)),
        Filters(brand=tuple(b.upper() for b in brands)),
        Filters(category="Tools > Power Tools"),
        Filters(category="kitchen"),
        Filters(price_min=20, price_max=100),
        Filters(price_max=10),
        Filters(in_stock=False),
        Filters(attributes={"color": ("Red", "black")}),
        Filters(
            category="Tools", in_stock=True, price_min=50, attributes={"material": ("Plastic",)}
        ),
    ]
    for filters in cases:
        mask = table.mask(filters)
        oracle = np.array([filters_hold(p, filters) for p in sample_products])
        np.testing.assert_array_equal(mask, oracle, err_msg=str(filters))
        assert mask.any(), f"case matches nothing, so it tests nothing: {filters}"
        rows = np.arange(0, table.size, 3)
        np.testing.assert_array_equal(table.mask(filters, rows), oracle[rows])


def test_unknown_attribute_names_valid_fields(sample_products: list[Product]) -> None:
    table = ProductTable(sample_products)
    with pytest.raises(
        InvalidFilterError, match="valid fields are: brand, category, price, in_stock, color"
    ) as info:
        table.mask(Filters(attributes={"colour": ("red",)}))
    assert info.value.field == "filters.colour"


def test_empty_filters() -> None:
    assert Filters().is_empty()
    assert Filters(attributes={"color": ()}).is_empty()
    assert not Filters(in_stock=False).is_empty()
