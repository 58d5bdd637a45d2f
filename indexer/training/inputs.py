"""What a training run learns from: judged train and dev queries and the catalog.

:func:`load_training_inputs` reads the splits (Home Depot CSV, or a generic queries TSV
with TREC qrels) and the catalog named by :class:`InputFiles`; :func:`rewrite_splits`
rewrites the queries the way the service does, so a model learns from the text it will
be asked at serving time.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shopsearch.indexer.catalog import ColumnMapping, load_catalog
from shopsearch.indexer.judgments import DatasetError, EvalDataset, load_generic, load_homedepot
from shopsearch.retrieval.encoders import tokenizer_words
from shopsearch.retrieval.query_rewrite import QueryRewriter
from shopsearch.retrieval.types import Product

__all__ = [
    "DEFAULT_HOMEDEPOT_DIR",
    "InputFiles",
    "TrainingInputs",
    "load_training_inputs",
    "rewrite_splits",
]

log = logging.getLogger(__name__)

#: Where the Home Depot splits and catalog are read from unless other files are given.
DEFAULT_HOMEDEPOT_DIR = Path("../shared/datasets/homedepot")


@dataclass(frozen=True)
class InputFiles:
    """Where the splits and the catalog are; unset paths are the Home Depot files in
    ``homedepot_dir`` (``train.csv``, ``dev.csv``, ``products.csv``).

    A split is a Home Depot ``.csv`` or a generic queries TSV with its TREC qrels
    (``train_qrels``/``dev_qrels``), whose grade minus ``gain_offset`` is the nDCG gain.
    ``id_field`` and ``title_field`` are the catalog's columns.
    """

    homedepot_dir: Path = DEFAULT_HOMEDEPOT_DIR
    train: Path | None = None
    train_qrels: Path | None = None
    dev: Path | None = None
    dev_qrels: Path | None = None
    gain_offset: float = 0.0
    catalog: Path | None = None
    id_field: str = "product_uid"
    title_field: str = "product_title"


@dataclass(frozen=True)
class TrainingInputs:
    """Judged train and dev queries, the catalog, and where they came from."""

    train: EvalDataset
    dev: EvalDataset
    products: list[Product]
    catalog_sha256: str
    sources: dict[str, str]
    #: What query rewriting did to the splits (``{"enabled": False}`` when it was off).
    rewrite: dict[str, Any] = field(default_factory=lambda: {"enabled": False})


def rewrite_splits(inputs: TrainingInputs, tokenizer_dir: Path) -> TrainingInputs:
    """``inputs`` with every train and dev query rewritten the way the service rewrites
    queries (units, spelling; ``retrieval/query_rewrite.py``), over the same catalog, so
    models learn from the text they will be asked at serving time. ``tokenizer_dir``'s
    vocabulary gives the known words spelling correction leaves alone."""
    rewriter = QueryRewriter.for_products(
        inputs.products, known_words=tokenizer_words(tokenizer_dir)
    )
    train = inputs.train.with_texts(lambda text: rewriter.rewrite(text).text)
    dev = inputs.dev.with_texts(lambda text: rewriter.rewrite(text).text)
    counts = {
        name: sum(a.text != b.text for a, b in zip(before.queries, after.queries, strict=True))
        for name, before, after in (("train", inputs.train, train), ("dev", inputs.dev, dev))
    }
    log.info(
        "query rewriting: %d of %d train and %d of %d dev queries rewritten",
        counts["train"],
        len(train.queries),
        counts["dev"],
        len(dev.queries),
    )
    return dataclasses.replace(
        inputs,
        train=train,
        dev=dev,
        rewrite={
            "enabled": True,
            "train_queries_rewritten": counts["train"],
            "dev_queries_rewritten": counts["dev"],
        },
    )


def _load_split(
    path: Path, qrels: Path | None, gain_offset: float, products_csv: Path | None
) -> EvalDataset:
    if path.suffix.lower() == ".csv":
        return load_homedepot(path, products_csv)
    if qrels is None:
        raise DatasetError(
            f"{path} is not a Home Depot .csv split; a generic queries TSV needs its qrels "
            "(--train-qrels / --dev-qrels)"
        )
    return load_generic(path, qrels, gain_offset=gain_offset)


def load_training_inputs(files: InputFiles | None = None) -> TrainingInputs:
    """Load the splits and the catalog ``files`` name (default: the Home Depot files).

    Raises:
        DatasetError, CatalogError: a file is missing or malformed.
    """
    files = files or InputFiles()
    train = files.train or files.homedepot_dir / "train.csv"
    dev = files.dev or files.homedepot_dir / "dev.csv"
    catalog = files.catalog or files.homedepot_dir / "products.csv"
    products, report = load_catalog(
        catalog, ColumnMapping(id=files.id_field, title=files.title_field)
    )
    # A Home Depot split's judged products are checked against its products.csv.
    hd_catalog = (
        catalog if catalog.suffix.lower() == ".csv" and files.id_field == "product_uid" else None
    )
    train_ds = _load_split(train, files.train_qrels, files.gain_offset, hd_catalog)
    dev_ds = _load_split(dev, files.dev_qrels, files.gain_offset, hd_catalog)
    return TrainingInputs(
        train=train_ds,
        dev=dev_ds,
        products=list(products),
        catalog_sha256=report.sha256,
        sources={
            "train": str(train),
            "train_qrels": str(files.train_qrels or ""),
            "dev": str(dev),
            "dev_qrels": str(files.dev_qrels or ""),
            "catalog": str(catalog),
        },
    )
