"""Scale a real catalog to N products by perturbing its titles, for latency and memory
benchmarks at 10k / 100k / 1M products.

``scale_catalog`` yields the original products first, then synthetic variants of them
(round robin over the originals) with new unique ids and titles changed by brand
swaps, sizes, colours and word order. Everything is deterministic given ``seed``, and
row ``i`` depends only on ``(seed, i)``, so the stream needs no memory beyond the
originals. A pandas DataFrame goes in as ``df.to_dict("records")``; ``write_catalog``
streams rows to CSV or Parquet in chunks.

Example (Home Depot, 1M rows)::

    base = pd.read_csv("products.csv", dtype=str).to_dict("records")
    rows = scale_catalog(base, 1_000_000, id_field="product_uid", title_field="product_title")
    write_catalog(rows, Path("catalog-1m.parquet"))
"""

from __future__ import annotations

import csv
import logging
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_PRODUCTS",
    "scale_catalog",
    "write_catalog",
]

logger = logging.getLogger(__name__)

#: Default upper bound of ``n``; raise ``max_products`` on purpose to go beyond it.
MAX_PRODUCTS = 1_000_000

_COLOURS = (
    "Oil-Rubbed Bronze",
    "Brushed Nickel",
    "Satin Nickel",
    "Stainless Steel",
    "Matte Black",
    "White",
    "Black",
    "Chrome",
    "Gray",
    "Red",
    "Blue",
    "Green",
    "Almond",
    "Bisque",
    "Brown",
    "Beige",
    "Natural",
    "Silver",
)
_COLOUR_RE = re.compile(r"\b(" + "|".join(re.escape(c) for c in _COLOURS) + r")\b")
_SIZE_RE = re.compile(
    r"\b(\d+(?:\.\d+)?(?:[- ]\d+/\d+)?|\d+/\d+)"
    r"(?=\s*-?\s*(?:in\.|ft\.|gal\.|lb\.|oz\.|qt\.|sq\.|mm\b|cm\b|Volt|V\b|W\b|Watt|Amp|Gauge|"
    r"Light|Piece|Pack|Tier|Drawer|Door|Shelf|Gal|BTU|in\b|ft\b))"
)
_FRACTIONS = ("1/4", "3/8", "1/2", "5/8", "3/4", "7/8")
_SIZE_FACTORS = (0.5, 0.75, 1.5, 2.0, 3.0)
_FICTIONAL_BRANDS = (
    "Acme",
    "Northfield",
    "Ridgeway",
    "Harborline",
    "Brightwell",
    "Ironcrest",
    "Oakmont",
    "Stonegate",
    "Lakeview",
    "Pinecrest",
)
_WORD = re.compile(r"^[A-Za-z][A-Za-z'-]*$")


def _new_size(number: str, rng: random.Random) -> str:
    if "/" in number:
        return rng.choice(_FRACTIONS)
    value = float(number) * rng.choice(_SIZE_FACTORS)
    if "." in number:
        return f"{value:.1f}"
    return str(max(1, round(value)))


def _swap_size(title: str, rng: random.Random) -> str:
    matches = list(_SIZE_RE.finditer(title))
    if not matches:
        return title
    match = rng.choice(matches)
    return title[: match.start()] + _new_size(match.group(1), rng) + title[match.end() :]


def _swap_colour(title: str, rng: random.Random) -> str:
    match = _COLOUR_RE.search(title)
    if match is None:
        return f"{title} in {rng.choice(_COLOURS)}"
    others = [c for c in _COLOURS if c != match.group(1)]
    return title[: match.start()] + rng.choice(others) + title[match.end() :]


def _swap_order(title: str, rng: random.Random) -> str:
    words = title.split(" ")
    spots = [
        i for i in range(1, len(words) - 1) if _WORD.match(words[i]) and _WORD.match(words[i + 1])
    ]
    if not spots:
        return title
    i = rng.choice(spots)
    words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


class _Perturber:
    """Title perturbations; brands come from the catalog's frequent first words."""

    def __init__(self, titles: Iterable[str]) -> None:
        first_words = Counter(t.split(" ", 1)[0] for t in titles if t)
        frequent = sorted(w for w, c in first_words.items() if c >= 3 and w[:1].isupper())
        self.brands: tuple[str, ...] = tuple(frequent) + _FICTIONAL_BRANDS
        self.known_brands = frozenset(self.brands)

    def _swap_brand(self, title: str, brand: str, rng: random.Random) -> tuple[str, str]:
        """Swap the brand at the start of the title (and in ``brand`` when given)."""
        if brand:
            if not title.startswith(brand):
                return title, brand
            old = brand
        else:
            old = title.split(" ", 1)[0]
            if old not in self.known_brands:
                return title, brand
        new = rng.choice(self.brands)
        if new == old:
            return title, brand
        return new + title[len(old) :], new if brand else brand

    def perturb(self, title: str, brand: str, rng: random.Random) -> tuple[str, str]:
        """A changed (title, brand): one perturbation surely, each other one with p = 0.5."""
        steps = ["brand", "size", "colour", "order"]
        rng.shuffle(steps)
        changed = False
        for step in steps:
            if changed and rng.random() < 0.5:
                continue
            before = title
            if step == "brand":
                title, brand = self._swap_brand(title, brand, rng)
            elif step == "size":
                title = _swap_size(title, rng)
            elif step == "colour":
                title = _swap_colour(title, rng)
            else:
                title = _swap_order(title, rng)
            changed = changed or title != before
        return title, brand


def _validate(products: Sequence[Mapping[str, Any]], id_field: str, title_field: str) -> list[str]:
    if not products:
        raise ValueError("the base catalog is empty; give at least one product to scale")
    ids: list[str] = []
    for i, row in enumerate(products):
        for name in (id_field, title_field):
            if name not in row or row[name] is None or str(row[name]) == "":
                raise ValueError(
                    f"base product #{i} has no {name!r} (fields: {sorted(row)}); "
                    "set id_field/title_field to the catalog's column names"
                )
        ids.append(str(row[id_field]))
    if len(set(ids)) != len(ids):
        duplicates = [pid for pid, c in Counter(ids).items() if c > 1]
        raise ValueError(f"base product ids repeat (e.g. {duplicates[:5]}); ids must be unique")
    return ids


def scale_catalog(
    products: Sequence[Mapping[str, Any]],
    n: int,
    *,
    seed: int = 0,
    id_field: str = "id",
    title_field: str = "title",
    brand_field: str = "brand",
    id_prefix: str = "syn-",
    max_products: int = MAX_PRODUCTS,
) -> Iterator[dict[str, Any]]:
    """Yield ``n`` products: the first ``min(n, len(products))`` originals, then variants.

    Every yielded row is a new dict with the base row's fields; its ``id_field`` is a
    string (originals keep theirs; variants get ``f"{id_prefix}{i:0Nd}"``, unique). A
    variant changes the title (and ``brand_field`` when the row has one and the title
    starts with it) and, when ``price`` is a number, scales it by 0.8..1.25. The same
    arguments always give the same rows.

    Raises:
        ValueError (at the call, before any row is yielded): ``n`` is negative or above
            ``max_products``, the base is empty, a row lacks the id or title, base ids
            repeat, or a new id would collide with a base id.
    """
    if n < 0 or n > max_products:
        raise ValueError(
            f"n = {n} is outside 0..{max_products}; pass max_products to go beyond {MAX_PRODUCTS:,}"
        )
    base_ids = _validate(products, id_field, title_field)
    width = len(str(max(n, 1)))
    taken = {pid for pid in base_ids if pid.startswith(id_prefix)}
    for i in range(n - min(n, len(products)) if taken else 0):
        if f"{id_prefix}{i:0{width}d}" in taken:
            raise ValueError(
                f"new id {id_prefix}{i:0{width}d} already exists in the base; "
                "choose another id_prefix"
            )
    perturber = _Perturber(str(row[title_field]) for row in products)
    return _generate(
        products, base_ids, n, seed, id_field, title_field, brand_field, id_prefix, width, perturber
    )


def _generate(
    products: Sequence[Mapping[str, Any]],
    base_ids: Sequence[str],
    n: int,
    seed: int,
    id_field: str,
    title_field: str,
    brand_field: str,
    id_prefix: str,
    width: int,
    perturber: _Perturber,
) -> Iterator[dict[str, Any]]:
    n_original = min(n, len(products))
    for row, pid in zip(products[:n_original], base_ids, strict=False):
        yield {**row, id_field: pid}
    for i in range(n - n_original):
        source = products[i % len(products)]
        rng = random.Random(f"{seed}/{i}")
        brand = str(source.get(brand_field) or "")
        title, new_brand = perturber.perturb(str(source[title_field]), brand, rng)
        row = {**source, id_field: f"{id_prefix}{i:0{width}d}", title_field: title}
        if brand_field in source and brand:
            row[brand_field] = new_brand
        price = source.get("price")
        if isinstance(price, int | float) and not isinstance(price, bool):
            row["price"] = round(float(price) * rng.uniform(0.8, 1.25), 2)
        yield row


def write_catalog(
    rows: Iterable[Mapping[str, Any]], path: Path, *, chunk_size: int = 100_000
) -> int:
    """Stream ``rows`` to ``path`` (``.csv`` or ``.parquet``) in chunks; return the row count.

    The columns are the first row's fields; a later row may lack some (written empty)
    but may not add new ones.

    Raises:
        ValueError: the suffix is neither ``.csv`` nor ``.parquet``, ``chunk_size`` is not
            positive, or a row has a field the first row lacks.
    """
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet"):
        raise ValueError(f"{path}: unsupported suffix {suffix!r}; choose .csv or .parquet")
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    path.parent.mkdir(parents=True, exist_ok=True)
    iterator = iter(rows)
    first = next(iterator, None)
    columns = list(first) if first is not None else []

    def chunks() -> Iterator[list[Mapping[str, Any]]]:
        chunk: list[Mapping[str, Any]] = [] if first is None else [first]
        for index, row in enumerate(iterator, start=1):
            extra = set(row) - set(columns)
            if extra:
                raise ValueError(f"row {index} has fields {sorted(extra)} the first row lacks")
            chunk.append(row)
            if len(chunk) >= chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    # Written beside the target and renamed into place: an interrupted run leaves no
    # truncated catalog that a later run would take for a finished one.
    final_path, path = path, path.with_name(f".{path.name}.partial")
    try:
        count = _write_rows(path, suffix, columns, chunks())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    path.replace(final_path)
    logger.info("wrote %d products to %s", count, final_path)
    return count


def _write_rows(
    path: Path, suffix: str, columns: list[str], chunks: Iterator[list[Mapping[str, Any]]]
) -> int:
    count = 0
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            for chunk in chunks:
                writer.writerows(chunk)
                count += len(chunk)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer_pq: pq.ParquetWriter | None = None
        try:
            for chunk in chunks:
                table = pa.Table.from_pylist(
                    [{c: r.get(c) for c in columns} for r in chunk],
                    schema=None if writer_pq is None else writer_pq.schema,
                )
                if writer_pq is None:
                    writer_pq = pq.ParquetWriter(path, table.schema)
                writer_pq.write_table(table)
                count += len(chunk)
        finally:
            if writer_pq is not None:
                writer_pq.close()
        if writer_pq is None:
            pq.write_table(pa.table({}), path)
    return count
