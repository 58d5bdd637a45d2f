"""Judged queries and TREC files, the one place training and evaluation read them from.

- :mod:`~indexer.judgments.datasets`: judged-query datasets (Home Depot CSV, the
  generic TSV + TREC qrels format), :class:`EvalDataset`, :class:`JudgedQuery`.
- :mod:`~indexer.judgments.trec`: TREC run and qrels files, the run type and the one
  tie-break order (:func:`ranked_ids`).
"""

from shopsearch.indexer.judgments.datasets import (
    HOMEDEPOT_GAIN_OFFSET,
    EvalDataset,
    JudgedQuery,
    convert_homedepot,
    homedepot_qid,
    load_generic,
    load_homedepot,
)
from shopsearch.indexer.judgments.trec import (
    DatasetError,
    Run,
    RunFileError,
    RunFormat,
    ranked_ids,
    read_qrels,
    read_run,
    run_from_rankings,
    write_qrels,
    write_run,
)

__all__ = [
    "HOMEDEPOT_GAIN_OFFSET",
    "DatasetError",
    "EvalDataset",
    "JudgedQuery",
    "Run",
    "RunFileError",
    "RunFormat",
    "convert_homedepot",
    "homedepot_qid",
    "load_generic",
    "load_homedepot",
    "ranked_ids",
    "read_qrels",
    "read_run",
    "run_from_rankings",
    "write_qrels",
    "write_run",
]
