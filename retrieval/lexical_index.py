"""Lexical (BM25) indexes behind one small :class:`LexicalIndex` protocol.

The embedded default is :class:`TantivyIndex` (on-disk, English stemming, field
boosts). The Elasticsearch backend implements the same protocol for shops that
outgrow one machine. Both search the same fields of :func:`retrieval.item_text`'s
parts, so their rankings are comparable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from shopsearch.retrieval.filters import Filters, category_matches
from shopsearch.retrieval.item_text import DESCRIPTION_CHARS
from shopsearch.retrieval.match_set import MatchSet, analyze, term_combinations
from shopsearch.retrieval.types import Product, ShopsearchError

__all__ = [
    "DEFAULT_FIELD_BOOSTS",
    "LexicalHit",
    "LexicalIndex",
    "LexicalIndexError",
    "TantivyIndex",
]

log = logging.getLogger(__name__)

#: Field boosts of the BM25 query: a word in the title says most about a product.
DEFAULT_FIELD_BOOSTS: dict[str, float] = {
    "title": 2.0,
    "brand": 1.5,
    "category": 1.0,
    "description": 0.5,
}

ProgressCallback = Callable[[int], None]


class LexicalIndexError(ShopsearchError):
    """The lexical index could not be built, opened or queried."""


@dataclass(frozen=True, slots=True)
class LexicalHit:
    """One BM25 result: the product id and its score (higher is better)."""

    id: str
    score: float


class LexicalIndex(Protocol):
    """What the engine needs from a BM25 engine."""

    backend: str

    def build(
        self, products: Iterable[Product], *, progress: ProgressCallback | None = None
    ) -> None:
        """Index ``products`` into an empty index. ``progress(n)`` is called with the
        number of products added since the last call."""
        ...

    def search(self, query: str, k: int, *, filters: Filters | None = None) -> list[LexicalHit]:
        """The best ``k`` products for ``query`` that pass ``filters``, best first."""
        ...

    def match_set(
        self, query: str, ids: Sequence[str], *, filters: Filters | None = None
    ) -> MatchSet:
        """Which of ``ids`` are lexical matches of ``query`` (hold enough of its terms,
        :func:`retrieval.match_set.min_should_match`, and pass ``filters``), and how many
        products of the index are. No terms: nothing matches."""
        ...

    def upsert(self, products: Sequence[Product]) -> None:
        """Add products, replacing any with the same id."""
        ...

    def delete(self, ids: Sequence[str]) -> None:
        """Remove products by id; unknown ids are ignored."""
        ...

    def count(self) -> int:
        """Number of products searchable now."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend, analyzer and boosts, for the snapshot manifest."""
        ...


def _category_levels(category: str) -> list[str]:
    """``"A > B > C"`` -> ``["a", "a > b", "a > b > c"]`` (lower-cased), for prefix filters."""
    parts = [p.strip().casefold() for p in category.split(">") if p.strip()]
    return [" > ".join(parts[: i + 1]) for i in range(len(parts))]


class TantivyIndex:
    """BM25 over title, brand, category and description with tantivy's English stemmer.

    Keyword copies of brand, category levels and attributes (``key=value``) are indexed
    raw so filters run inside the engine. The index lives in ``path``.
    """

    backend = "tantivy"
    TOKENIZER = "en_stem"  # tantivy's simple tokenizer + lower-case + English Porter stemmer

    def __init__(self, path: Path, *, field_boosts: dict[str, float] | None = None) -> None:
        import tantivy

        self.path = Path(path)
        self.field_boosts = dict(field_boosts or DEFAULT_FIELD_BOOSTS)
        builder = tantivy.SchemaBuilder()
        builder.add_text_field("id", stored=True, tokenizer_name="raw")
        for name in ("title", "brand", "category", "description"):
            builder.add_text_field(name, stored=False, tokenizer_name=self.TOKENIZER)
        builder.add_text_field("brand_kw", tokenizer_name="raw")
        builder.add_text_field("category_kw", tokenizer_name="raw")
        builder.add_text_field("attr_kw", tokenizer_name="raw")
        builder.add_float_field("price", indexed=True, fast=True)
        builder.add_integer_field("in_stock", indexed=True, fast=True)
        self.schema = builder.build()
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            self.index = tantivy.Index(self.schema, path=str(self.path), reuse=True)
        except ValueError as exc:  # tantivy raises ValueError for a damaged/foreign index
            raise LexicalIndexError(f"cannot open tantivy index at {self.path}: {exc}") from exc
        self._tantivy = tantivy

    @classmethod
    def load(cls, path: Path) -> TantivyIndex:
        """Open an index written by :meth:`build` (its boosts come from ``lexical.json``)."""
        meta_path = Path(path) / "lexical.json"
        if not meta_path.exists():
            raise LexicalIndexError(f"{meta_path} is missing: not a shopsearch tantivy index")
        meta = json.loads(meta_path.read_text())
        return cls(Path(path), field_boosts=meta["field_boosts"])

    def _document(self, product: Product) -> Any:
        doc = self._tantivy.Document()
        doc.add_text("id", product.id)
        doc.add_text("title", product.title)
        if product.brand:
            doc.add_text("brand", product.brand)
            doc.add_text("brand_kw", product.brand.casefold())
        if product.category:
            doc.add_text("category", product.category)
            for level in _category_levels(product.category):
                doc.add_text("category_kw", level)
        if product.description:
            doc.add_text("description", product.description[:DESCRIPTION_CHARS])
        for key, value in product.attributes.items():
            if value:
                doc.add_text("attr_kw", f"{key}={value.casefold()}")
        if product.price is not None:
            doc.add_float("price", float(product.price))
        doc.add_integer("in_stock", -1 if product.in_stock is None else int(product.in_stock))
        return doc

    def build(
        self, products: Iterable[Product], *, progress: ProgressCallback | None = None
    ) -> None:
        writer = self.index.writer(heap_size=256_000_000, num_threads=1)
        writer.delete_all_documents()
        pending = 0
        for product in products:
            writer.add_document(self._document(product))
            pending += 1
            if progress is not None and pending == 1000:
                progress(pending)
                pending = 0
        writer.commit()
        writer.wait_merging_threads()
        if progress is not None and pending:
            progress(pending)
        self.index.reload()
        (self.path / "lexical.json").write_text(json.dumps(self.describe(), indent=2))

    def upsert(self, products: Sequence[Product]) -> None:
        writer = self.index.writer(heap_size=64_000_000, num_threads=1)
        for product in products:
            writer.delete_documents_by_term("id", product.id)
            writer.add_document(self._document(product))
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()

    def delete(self, ids: Sequence[str]) -> None:
        writer = self.index.writer(heap_size=64_000_000, num_threads=1)
        for product_id in ids:
            writer.delete_documents_by_term("id", product_id)
        writer.commit()
        writer.wait_merging_threads()
        self.index.reload()

    def count(self) -> int:
        return int(self.index.searcher().num_docs)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "analyzer": self.TOKENIZER,
            "field_boosts": self.field_boosts,
        }

    def _filter_queries(self, filters: Filters) -> list[Any]:
        q = self._tantivy.Query
        out: list[Any] = []
        if filters.brand:
            out.append(
                q.term_set_query(self.schema, "brand_kw", [b.casefold() for b in filters.brand])
            )
        if filters.category is not None:
            levels = _category_levels(filters.category)
            if levels:
                out.append(q.term_query(self.schema, "category_kw", levels[-1]))
        if filters.price_min is not None or filters.price_max is not None:
            out.append(
                q.range_query(
                    self.schema,
                    "price",
                    self._tantivy.FieldType.Float,
                    filters.price_min,
                    filters.price_max,
                )
            )
        if filters.in_stock is not None:
            out.append(q.term_query(self.schema, "in_stock", int(filters.in_stock)))
        for key, values in filters.attributes.items():
            if values:
                terms = [f"{key}={v.casefold()}" for v in values]
                out.append(q.term_set_query(self.schema, "attr_kw", terms))
        return out

    def _with_filters(self, query: Any, filters: Filters | None) -> Any:
        """``query`` restricted to ``filters`` (which add nothing to the score)."""
        extra = self._filter_queries(filters) if filters is not None else []
        if not extra:
            return query
        Occur = self._tantivy.Occur
        clauses = [(Occur.Must, query)] + [
            (Occur.Must, self._tantivy.Query.const_score_query(f, 0.0)) for f in extra
        ]
        return self._tantivy.Query.boolean_query(clauses)

    def match_set(
        self, query: str, ids: Sequence[str], *, filters: Filters | None = None
    ) -> MatchSet:
        groups = term_combinations(analyze(query))
        if not groups:
            return MatchSet(ids=frozenset(), total=0)
        Q, Occur = self._tantivy.Query, self._tantivy.Occur
        fields = list(self.field_boosts)

        def term(text: str) -> Any:  # the term in any text field
            return Q.boolean_query(
                [(Occur.Should, Q.term_query(self.schema, f, text)) for f in fields]
            )

        terms = {t: term(t) for group in groups for t in group}
        matches = Q.boolean_query(
            [
                (Occur.Should, Q.boolean_query([(Occur.Must, terms[t]) for t in group]))
                for group in groups
            ]
        )
        matches = self._with_filters(Q.const_score_query(matches, 1.0), filters)
        searcher = self.index.searcher()
        # count=True counts every match; limit 0 would panic in tantivy. (The stubs do not
        # declare SearchResult.count.)
        total = int(searcher.search(matches, 1, count=True).count or 0)  # type: ignore[attr-defined]
        found: frozenset[str] = frozenset()
        if ids and total:
            among = Q.boolean_query(
                [
                    (Occur.Must, matches),
                    (Occur.Must, Q.term_set_query(self.schema, "id", list(ids))),
                ]
            )
            result = searcher.search(among, len(ids), count=False)
            found = frozenset(searcher.doc(address)["id"][0] for _, address in result.hits)
        return MatchSet(ids=found, total=total)

    def search(self, query: str, k: int, *, filters: Filters | None = None) -> list[LexicalHit]:
        if k <= 0 or not analyze(query):
            # No term at all ("!! ??", "*"): nothing matches. tantivy's parser would read
            # some of these as "every document".
            return []
        # Lenient parsing: a shopper's "3/4 in. pipe (copper)" is text, not query syntax.
        text_query, _errors = self.index.parse_query_lenient(
            query,
            default_field_names=list(self.field_boosts),
            field_boosts=self.field_boosts,
        )
        text_query = self._with_filters(text_query, filters)
        searcher = self.index.searcher()
        result = searcher.search(text_query, k, count=False)
        return [
            LexicalHit(id=searcher.doc(address)["id"][0], score=float(score))
            for score, address in result.hits
        ]


def filters_hold(product: Product, filters: Filters) -> bool:
    """Reference check of ``filters`` on one product (the contract tests' oracle)."""
    if filters.brand and product.brand.casefold() not in {b.casefold() for b in filters.brand}:
        return False
    if filters.category is not None and not category_matches(product.category, filters.category):
        return False
    if filters.price_min is not None and (
        product.price is None or product.price < filters.price_min
    ):
        return False
    if filters.price_max is not None and (
        product.price is None or product.price > filters.price_max
    ):
        return False
    if filters.in_stock is not None and product.in_stock is not filters.in_stock:
        return False
    for key, values in filters.attributes.items():
        if values and product.attributes.get(key, "").casefold() not in {
            v.casefold() for v in values
        }:
            return False
    return True
