"""A training job from files to a registered model: ``shopsearch train towers|reranker``
without the command line.

Both jobs run the same steps; only the examples, the trainer and the card differ:

1. load the judged train and dev queries and the catalog (:mod:`indexer.training.inputs`),
   rewritten as the service rewrites queries unless ``rewrite`` is off;
2. open the mining sources: the serving snapshot of ``index_dir``, else an in-memory
   base index over the catalog (BM25 + exact dense search; the catalog's vectors are
   cached under ``<models_dir>/.cache/embeddings`` keyed by model checksum, so reruns
   do not re-encode);
3. mine candidates and build the training examples and the dev subset
   (:mod:`indexer.training.candidate_mining`, :mod:`indexer.training.mined_data`);
4. the job's own part: the examples (triplets or labelled pairs), an optional teacher's
   margins or labels, the trainer (:mod:`~indexer.training.towers`,
   :mod:`~indexer.training.reranker`);
5. the model card (:mod:`indexer.training.cards`) and registration in the registry.

Steps 1-3 are :func:`prepare`, used by both jobs. Jobs take their options as objects
(paths already resolved: registry specs are the caller's business), report progress
through an :data:`indexer.progress.ProgressFactory` and a step callback, and return the
registered model; errors are raised (``ShopsearchError``, ``DatasetError``,
``CatalogError``), never printed.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.progress import ProgressFactory, no_progress
from shopsearch.indexer.training.candidate_mining import (
    CandidateSource,
    catalog_embeddings,
    dense_source,
    lexical_source,
    mine_candidates,
    snapshot_sources,
)
from shopsearch.indexer.training.cards import (
    base_card,
    reranker_fields,
    teacher_card,
    towers_fields,
)
from shopsearch.indexer.training.dev_metrics import RerankDevSet
from shopsearch.indexer.training.inputs import (
    InputFiles,
    TrainingInputs,
    load_training_inputs,
    rewrite_splits,
)
from shopsearch.indexer.training.loop import StepCallback
from shopsearch.indexer.training.mined_data import (
    DevData,
    MiningOptions,
    TrainingData,
    build_dev_data,
    build_training_data,
)
from shopsearch.indexer.training.reranker import RerankerTrainingConfig, train_reranker
from shopsearch.indexer.training.towers import TowerTrainingConfig, train_towers
from shopsearch.retrieval.encoders import Encoder
from shopsearch.retrieval.model_registry import RegisteredModel, new_version, register, staging_dir
from shopsearch.retrieval.types import Product, ShopsearchError

__all__ = [
    "JobOptions",
    "Mining",
    "Prepared",
    "RerankerJob",
    "TowersJob",
    "open_mining",
    "prepare",
    "run_reranker_job",
    "run_towers_job",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOptions:
    """What both jobs share: the inputs, the mining, and where the model goes.

    ``base_model``: the weights training starts from (its tokenizer also gives the words
    query rewriting knows). ``mining_model``: the towers that mine in memory (unused with
    ``index_dir``, whose snapshot names its own). ``dev_queries``: dev queries measured
    during training. ``device``: where mining and any teacher run ('auto', 'cpu', 'cuda').
    """

    models_dir: Path
    base_model: Path
    mining_model: Path
    files: InputFiles = field(default_factory=InputFiles)
    index_dir: Path | None = None
    mining: MiningOptions = field(default_factory=MiningOptions)
    dev_queries: int = 150
    rewrite: bool = True
    device: str = "auto"


@dataclass(frozen=True)
class TowersJob:
    """Train the two towers; ``teacher``: a trained cross-encoder whose margins are
    distilled into them (None: no distillation)."""

    options: JobOptions
    config: TowerTrainingConfig
    teacher: Path | None = None


@dataclass(frozen=True)
class RerankerJob:
    """Train the cross-encoder; ``teacher``: a trained one whose scores make up
    ``teacher_weight`` of every label (None: no distillation)."""

    options: JobOptions
    config: RerankerTrainingConfig
    teacher: Path | None = None
    teacher_weight: float = 0.5


# -- the shared steps ------------------------------------------------------------------


@dataclass(frozen=True)
class Mining:
    """Where candidates come from: the sources, what the card says of them, the encoder."""

    sources: list[CandidateSource]
    description: dict[str, Any]
    encoder: Encoder


def open_mining(
    products: Sequence[Product],
    options: JobOptions,
    workdir: Path,
    progress: ProgressFactory = no_progress,
) -> Mining:
    """The mining sources of ``options``: the promoted snapshot of ``options.index_dir``,
    else a BM25 index built in ``workdir`` and exact dense search over ``products``.

    Raises:
        ShopsearchError: ``index_dir`` has no promoted snapshot, or its snapshot was
            encoded by other towers than the ones it names.
    """
    if options.index_dir is not None:
        from shopsearch.indexer.snapshot import SnapshotStore
        from shopsearch.indexer.snapshot_load import load_snapshot

        store = SnapshotStore(options.index_dir)
        version = store.current()
        if version is None:
            raise ShopsearchError(
                f"{options.index_dir} has no promoted snapshot; build one or leave out --index-dir"
            )
        snapshot = load_snapshot(store.path(version))
        encoder = Encoder(Path(snapshot.item_model["path"]), device=options.device)
        lexical, dense = snapshot_sources(snapshot, encoder)
        description = {
            "from": "snapshot",
            "index_dir": str(options.index_dir),
            "snapshot": version,
            "model": encoder.info.to_dict(),
        }
        return Mining([lexical, dense], description, encoder)
    from shopsearch.retrieval.lexical_index import TantivyIndex

    encoder = Encoder(options.mining_model, device=options.device)
    lexical_index = TantivyIndex(workdir / "lexical")
    with progress("indexing catalog (BM25) for mining", len(products)) as advance:
        lexical_index.build(products, progress=advance)
    vectors = catalog_embeddings(
        encoder, products, options.models_dir / ".cache" / "embeddings", progress=progress
    )
    sources = [
        lexical_source(lexical_index),
        dense_source(encoder, vectors, [p.id for p in products]),
    ]
    description = {
        "from": "in-memory index over the catalog (tantivy BM25 + exact dense)",
        "model": encoder.info.to_dict(),
    }
    return Mining(sources, description, encoder)


@dataclass(frozen=True)
class Prepared:
    """The shared steps' output: inputs, mining, training examples, dev subset, and the
    registry version the model will be registered as."""

    inputs: TrainingInputs
    mining: Mining
    data: TrainingData
    dev: DevData
    version: str

    def card(self, options: JobOptions) -> dict[str, Any]:
        """The card's first fields (:func:`indexer.training.cards.base_card`)."""
        return base_card(
            options.base_model, self.inputs, self.data, self.mining.description, options.mining
        )


@contextmanager
def prepare(
    options: JobOptions, kind: str, progress: ProgressFactory = no_progress
) -> Iterator[Prepared]:
    """Load, rewrite, mine and build the examples of a ``kind`` job; the mining's work
    directory (an in-memory run's BM25 index) lives until the context ends.

    Raises:
        DatasetError, CatalogError: an input file is missing or malformed.
        ShopsearchError: mining cannot start, or the data make no training set.
    """
    inputs = load_training_inputs(options.files)
    if options.rewrite:
        inputs = rewrite_splits(inputs, options.base_model)
    version = new_version(options.models_dir, kind)
    with tempfile.TemporaryDirectory(prefix="shopsearch-mining-") as work:
        mining = open_mining(inputs.products, options, Path(work), progress)
        depth, seed = options.mining.depth, options.mining.seed
        candidates = mine_candidates(inputs.train.queries, mining.sources, depth, progress=progress)
        data = build_training_data(inputs.train, inputs.products, candidates, options.mining)
        dev = build_dev_data(
            inputs.dev, inputs.products, mining.sources, n_queries=options.dev_queries, seed=seed
        )
        yield Prepared(inputs, mining, data, dev, version)


# -- the jobs ----------------------------------------------------------------------------


def run_towers_job(
    job: TowersJob,
    *,
    progress: ProgressFactory = no_progress,
    on_step: StepCallback | None = None,
) -> RegisteredModel:
    """Train the towers as ``job`` says and register them as ``towers/<version>``."""
    started = time.monotonic()
    options = job.options
    with prepare(options, "towers", progress) as prepared:
        triplets = prepared.data.tower_triplets()
        distillation = margins = None
        if job.teacher is not None:
            margins, distillation = _teacher_margins(
                job.teacher, triplets, options.device, progress
            )
        data_ready = time.monotonic()
        result = train_towers(
            triplets,
            options.base_model,
            staging_dir(options.models_dir, "towers", prepared.version),
            job.config,
            dev=prepared.dev.retrieval,
            on_step=on_step,
            teacher_margins=margins,
        )
    card = prepared.card(options)
    card.update(
        towers_fields(
            result,
            job.config,
            triplets=len(triplets),
            distillation=distillation,
            dev=prepared.dev.retrieval,
            started=started,
            prepared=data_ready,
        )
    )
    return register(options.models_dir, "towers", prepared.version, card)


def run_reranker_job(
    job: RerankerJob,
    *,
    progress: ProgressFactory = no_progress,
    on_step: StepCallback | None = None,
) -> RegisteredModel:
    """Train the cross-encoder as ``job`` says and register it as ``reranker/<version>``."""
    started = time.monotonic()
    options = job.options
    with prepare(options, "reranker", progress) as prepared:
        pairs = prepared.data.reranker_pairs()
        distillation: dict[str, Any] = {}
        if job.teacher is not None:
            pairs, distillation = _teacher_labels(
                job.teacher, pairs, job.teacher_weight, options.device, progress
            )
        data_ready = time.monotonic()
        dev = RerankDevSet(
            queries=prepared.dev.rerank_queries,
            texts=prepared.dev.rerank_texts,
            gains=prepared.dev.rerank_gains,
            judged=prepared.dev.rerank_judged,
        )
        result = train_reranker(
            pairs,
            options.base_model,
            staging_dir(options.models_dir, "reranker", prepared.version),
            job.config,
            dev=dev,
            on_step=on_step,
        )
    card = prepared.card(options)
    card.update(
        reranker_fields(
            result,
            job.config,
            base=options.base_model,
            pairs=len(pairs),
            data=prepared.data,
            distillation=distillation,
            dev=dev,
            started=started,
            prepared=data_ready,
        )
    )
    return register(options.models_dir, "reranker", prepared.version, card)


# -- teachers ----------------------------------------------------------------------------


def _teacher_labels(
    teacher_path: Path,
    pairs: Sequence[tuple[str, str, float]],
    weight: float,
    device: str,
    progress: ProgressFactory,
) -> tuple[list[tuple[str, str, float]], dict[str, Any]]:
    """Training pairs with the teacher's scores mixed into their labels, and what the
    model card says of it (indexer/training/compress.py)."""
    from shopsearch.indexer.training.compress import distilled_labels
    from shopsearch.rerank.cross_encoder import Reranker

    teacher = Reranker(teacher_path, device=device, backend="auto")
    with progress("teacher scores", len(pairs)) as advance:
        mixed, stats = distilled_labels(teacher, pairs, weight, progress=advance)
    card = {
        "teacher": teacher_card(teacher, teacher_path),
        "labels": f"(1 - {weight:g}) * judged label + {weight:g} * teacher score",
        **stats,
    }
    log.info("teacher labels: %s", stats)
    return mixed, card


def _teacher_margins(
    teacher_path: Path,
    triplets: Sequence[tuple[str, str, str]],
    device: str,
    progress: ProgressFactory,
) -> tuple[npt.NDArray[np.float32], dict[str, Any]]:
    """The teacher's margin for every triplet, and what the model card says of it."""
    from shopsearch.indexer.training.distill import teacher_margins
    from shopsearch.rerank.cross_encoder import Reranker

    started = time.monotonic()
    # auto: onnx-int8 on a CPU, 2.9x faster than torch at the same nDCG (README).
    teacher = Reranker(teacher_path, device=device, backend="auto")
    with progress("teacher margins", len(triplets)) as advance:
        margins = teacher_margins(teacher, triplets, progress=advance)
    card = {
        "teacher": teacher_card(teacher, teacher_path),
        "margins": {
            "count": len(margins),
            "mean": round(float(np.mean(margins)), 4),
            "std": round(float(np.std(margins)), 4),
            "negative_share": round(float(np.mean(margins < 0)), 4),
        },
        "wall_s": round(time.monotonic() - started, 1),
    }
    log.info("teacher margins: %s", card["margins"])
    return margins, card
