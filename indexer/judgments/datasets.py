"""Judged-query datasets (for evaluation and training): the Home Depot CSV format and a generic TSV + TREC-qrels format.

A dataset is a list of queries, each with the graded judgments of some products.
Grades are stored as they appear in the source (Home Depot: the raw mean rating,
1.0 .. 3.0, e.g. 2.33). The *gain* used by nDCG is ``max(grade - gain_offset, 0)``;
``gain_offset`` is a property of the grading scale, kept on the dataset
(Home Depot: 1.0, so gain = relevance - 1 as the evaluation protocols require).

Generic format (what any shop can produce; ``convert_homedepot`` writes it):

- queries file, UTF-8 TSV without header: ``qid<TAB>text`` per line;
- qrels file, TREC format: ``qid 0 docid grade`` per line (whitespace separated, the
  second field is ignored, ``grade`` may be fractional).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shopsearch.indexer.judgments.trec import DatasetError, parse_grade, read_qrels, write_qrels

__all__ = [
    "HOMEDEPOT_GAIN_OFFSET",
    "EvalDataset",
    "JudgedQuery",
    "convert_homedepot",
    "homedepot_qid",
    "load_generic",
    "load_homedepot",
]

logger = logging.getLogger(__name__)

#: Home Depot ratings run from 1 (irrelevant) to 3; the protocols use gain = relevance - 1.
HOMEDEPOT_GAIN_OFFSET = 1.0
_HD_COLUMNS = ("id", "product_uid", "product_title", "search_term", "relevance")
_HD_MIN_GRADE, _HD_MAX_GRADE = 1.0, 3.0


@dataclass(frozen=True)
class JudgedQuery:
    """One query and its judgments.

    ``judgments`` maps product id -> grade as found in the source (not the gain). It
    may be empty (a query nobody judged); such a query is left out of every metric.
    """

    qid: str
    text: str
    judgments: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalDataset:
    """A named list of judged queries with unique ``qid``s, in file order.

    ``gain_offset`` turns a grade into an nDCG gain: ``gain = max(grade - gain_offset, 0)``.
    ``catalog_ids`` is the set of product ids of the catalog the judgments refer to,
    when the loader was given one (``None`` otherwise).
    """

    name: str
    queries: tuple[JudgedQuery, ...]
    gain_offset: float = 0.0
    catalog_ids: frozenset[str] | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for query in self.queries:
            if query.qid in seen:
                raise DatasetError(
                    f"dataset {self.name!r}: query id {query.qid!r} appears twice; "
                    "query ids must be unique"
                )
            seen.add(query.qid)

    @property
    def n_pairs(self) -> int:
        """Number of judged (query, product) pairs."""
        return sum(len(q.judgments) for q in self.queries)

    def gain(self, grade: float) -> float:
        """The nDCG gain of ``grade`` on this dataset's scale (never negative)."""
        return max(grade - self.gain_offset, 0.0)

    def by_qid(self) -> dict[str, JudgedQuery]:
        """The queries keyed by ``qid``."""
        return {q.qid: q for q in self.queries}

    def with_texts(self, rewrite: Callable[[str], str]) -> EvalDataset:
        """The same dataset with each query's text replaced by ``rewrite(text)``; ids,
        judgments and order are kept (so runs and metrics still line up)."""
        return dataclasses.replace(
            self,
            queries=tuple(dataclasses.replace(q, text=rewrite(q.text)) for q in self.queries),
        )


def homedepot_qid(search_term: str) -> str:
    """The stable query id of a Home Depot search term: ``hd-`` + 12 hex of its SHA-1.

    >>> homedepot_qid("l bracket")
    'hd-dd5aa30133e0'
    """
    return "hd-" + hashlib.sha1(search_term.encode("utf-8")).hexdigest()[:12]


def _read_catalog_ids(products_csv: Path, id_field: str = "product_uid") -> frozenset[str]:
    if not products_csv.is_file():
        raise DatasetError(
            f"{products_csv}: catalog file not found; pass the path of products.csv "
            "(e.g. ../shared/datasets/homedepot/products.csv)"
        )
    with products_csv.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or id_field not in reader.fieldnames:
            raise DatasetError(
                f"{products_csv}:1: header {reader.fieldnames} has no {id_field!r} column; "
                f"the catalog needs columns {id_field},product_title"
            )
        ids: set[str] = set()
        for row in reader:
            pid = (row[id_field] or "").strip()
            if not pid:
                raise DatasetError(
                    f"{products_csv}:{reader.line_num}: empty {id_field}; every product needs an id"
                )
            ids.add(pid)
    return frozenset(ids)


def _read_homedepot_pairs(split_csv: Path) -> list[tuple[str, str, float, int]]:
    """Rows of a Home Depot split as (search_term, product id, relevance, line number)."""
    if not split_csv.is_file():
        raise DatasetError(
            f"{split_csv}: file not found; pass train.csv or dev.csv from "
            "../shared/datasets/homedepot/"
        )
    pairs: list[tuple[str, str, float, int]] = []
    with split_csv.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in _HD_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{split_csv}:1: header {header} lacks columns {missing}; a Home Depot split "
                f"has the header {','.join(_HD_COLUMNS)}"
            )
        for row in reader:
            where = f"{split_csv}:{reader.line_num}"
            if None in row or any(row[c] is None for c in _HD_COLUMNS):
                raise DatasetError(
                    f"{where}: expected {len(header)} fields; quote fields that contain commas"
                )
            term = row["search_term"]
            pid = row["product_uid"].strip()
            if not term.strip() or not pid:
                raise DatasetError(f"{where}: empty search_term or product_uid; fill or drop it")
            grade = parse_grade(
                row["relevance"], where, "relevance must be a mean rating between 1 and 3"
            )
            if not _HD_MIN_GRADE <= grade <= _HD_MAX_GRADE:
                raise DatasetError(
                    f"{where}: relevance {grade} is outside 1..3; Home Depot ratings run from "
                    "1 (irrelevant) to 3 (highly relevant)"
                )
            pairs.append((term, pid, grade, reader.line_num))
    return pairs


def _group_homedepot(
    split_csv: Path, pairs: Iterable[tuple[str, str, float, int]]
) -> tuple[JudgedQuery, ...]:
    texts: dict[str, str] = {}
    judgments: dict[str, dict[str, float]] = {}
    first_line: dict[tuple[str, str], int] = {}
    for term, pid, grade, line in pairs:
        qid = homedepot_qid(term)
        known = texts.setdefault(qid, term)
        if known != term:
            raise DatasetError(
                f"{split_csv}:{line}: query ids collide: {term!r} and {known!r} both hash to "
                f"{qid}; lengthen the id in homedepot_qid"
            )
        if (qid, pid) in first_line:
            raise DatasetError(
                f"{split_csv}:{line}: product {pid} is judged twice for {term!r} (first on line "
                f"{first_line[(qid, pid)]}); keep one judgment per pair"
            )
        first_line[(qid, pid)] = line
        judgments.setdefault(qid, {})[pid] = grade
    return tuple(JudgedQuery(qid, texts[qid], judgments[qid]) for qid in texts)


def load_homedepot(split_csv: Path, products_csv: Path | None = None) -> EvalDataset:
    """Load a Home Depot split (``train.csv`` or ``dev.csv``).

    One query per distinct ``search_term`` (kept verbatim), id ``homedepot_qid(term)``;
    product ids are the ``product_uid`` strings; grades are the raw ``relevance``
    values; ``gain_offset`` is 1.0. With ``products_csv`` every judged product must be
    in the catalog, and the dataset records the catalog's ids.

    Raises:
        DatasetError: a file is missing, a row is malformed, a pair is judged twice, or a
            judged product is not in the catalog.
    """
    queries = _group_homedepot(split_csv, _read_homedepot_pairs(split_csv))
    catalog_ids = None
    if products_csv is not None:
        catalog_ids = _read_catalog_ids(products_csv)
        unknown = sorted({pid for q in queries for pid in q.judgments} - catalog_ids)
        if unknown:
            raise DatasetError(
                f"{split_csv}: {len(unknown)} judged products are not in {products_csv} "
                f"(e.g. {unknown[:5]}); use the products.csv of the same dataset"
            )
    dataset = EvalDataset(
        name=f"homedepot-{split_csv.stem}",
        queries=queries,
        gain_offset=HOMEDEPOT_GAIN_OFFSET,
        catalog_ids=catalog_ids,
    )
    logger.info(
        "loaded %s: %d queries, %d judged pairs", dataset.name, len(queries), dataset.n_pairs
    )
    return dataset


def _read_queries_tsv(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise DatasetError(f"{path}: queries file not found; expected TSV lines qid<TAB>text")
    texts: dict[str, str] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            qid, tab, text = line.partition("\t")
            qid = qid.strip()
            if not tab or not qid or not text.strip():
                raise DatasetError(
                    f"{path}:{number}: expected 'qid<TAB>text', got {line[:80]!r}; separate the "
                    "query id from the text with one tab"
                )
            if qid in texts:
                raise DatasetError(
                    f"{path}:{number}: query id {qid!r} appears twice; make it unique"
                )
            texts[qid] = text
    return texts


def load_generic(
    queries_tsv: Path,
    qrels_path: Path,
    *,
    gain_offset: float = 0.0,
    name: str | None = None,
) -> EvalDataset:
    """Load a generic dataset: a ``qid<TAB>text`` queries file and TREC qrels.

    Queries keep the file order; a query without qrels lines is kept with no
    judgments (metrics leave it out and count it). ``gain_offset`` is subtracted from
    every grade to get the nDCG gain: use 0 for grades that already are gains
    (0 = irrelevant) and ``HOMEDEPOT_GAIN_OFFSET`` (1.0) for files written by
    ``convert_homedepot``.

    Raises:
        DatasetError: a file is missing, a line is malformed, a qrels line names a query
            the queries file lacks, or a pair is judged twice.
    """
    texts = _read_queries_tsv(queries_tsv)
    judgments = read_qrels(qrels_path, known=texts, known_in=queries_tsv)
    queries = tuple(JudgedQuery(qid, text, judgments[qid]) for qid, text in texts.items())
    unjudged = sum(1 for q in queries if not q.judgments)
    if unjudged:
        logger.warning("%s: %d queries have no qrels lines", queries_tsv, unjudged)
    return EvalDataset(
        name=name or queries_tsv.parent.name or queries_tsv.stem,
        queries=queries,
        gain_offset=gain_offset,
    )


def convert_homedepot(split_csv: Path, out_dir: Path) -> tuple[Path, Path]:
    """Write a Home Depot split in the generic format; return (queries.tsv, qrels.txt).

    ``queries.tsv`` holds ``qid<TAB>search_term`` and ``qrels.txt`` holds
    ``qid 0 product_uid relevance`` with the raw relevance (e.g. ``2.33``). Load the
    result with ``load_generic(..., gain_offset=HOMEDEPOT_GAIN_OFFSET)``. The catalog is
    not copied: use ``products.csv`` itself, read with
    ``--id-field product_uid --title-field product_title``.

    Raises:
        DatasetError: the split is malformed, or a search term contains a tab or newline.
    """
    dataset = load_homedepot(split_csv)
    out_dir.mkdir(parents=True, exist_ok=True)
    queries_path, qrels_path = out_dir / "queries.tsv", out_dir / "qrels.txt"
    with queries_path.open("w", encoding="utf-8", newline="\n") as queries_out:
        for query in dataset.queries:
            if any(c in query.text for c in "\t\r\n"):
                raise DatasetError(
                    f"{split_csv}: search term {query.text!r} contains a tab or newline, which "
                    "the TSV queries format cannot hold; clean the term"
                )
            queries_out.write(f"{query.qid}\t{query.text}\n")
    write_qrels({q.qid: q.judgments for q in dataset.queries}, qrels_path)
    logger.info("wrote %s and %s", queries_path, qrels_path)
    return queries_path, qrels_path
