"""The product store of a snapshot: products in row order, as one Parquet file.

Row ``i`` of the store is id ``i`` of the vector index, so the two must be written
from the same product list.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from shopsearch.retrieval.types import Product

__all__ = ["read_products", "write_products"]

_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("title", pa.string()),
        ("description", pa.string()),
        ("brand", pa.string()),
        ("category", pa.string()),
        ("price", pa.float64()),
        ("in_stock", pa.bool_()),
        ("image_url", pa.string()),
        ("attributes", pa.string()),  # JSON object of keyword attributes
    ]
)


def write_products(products: Sequence[Product], path: Path) -> None:
    """Write ``products`` (in row order) to ``path`` (Parquet, zstd)."""
    columns = {
        "id": [p.id for p in products],
        "title": [p.title for p in products],
        "description": [p.description for p in products],
        "brand": [p.brand for p in products],
        "category": [p.category for p in products],
        "price": [p.price for p in products],
        "in_stock": [p.in_stock for p in products],
        "image_url": [p.image_url for p in products],
        "attributes": [json.dumps(p.attributes) if p.attributes else "" for p in products],
    }
    pq.write_table(pa.table(columns, schema=_SCHEMA), path, compression="zstd")


def read_products(path: Path) -> list[Product]:
    """Read a store written by :func:`write_products`, in row order."""
    data = pq.read_table(path).to_pydict()
    return [
        Product(
            id=data["id"][i],
            title=data["title"][i],
            description=data["description"][i] or "",
            brand=data["brand"][i] or "",
            category=data["category"][i] or "",
            price=data["price"][i],
            in_stock=data["in_stock"][i],
            image_url=data["image_url"][i] or "",
            attributes=json.loads(data["attributes"][i]) if data["attributes"][i] else {},
        )
        for i in range(len(data["id"]))
    ]
