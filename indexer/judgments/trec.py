"""TREC files: runs (ranked results per query) and qrels (graded judgments), read and
written in one place for training and evaluation.

A *run* is ``{qid: {doc_id: score}}``; a higher score ranks higher and ties are broken
by ``doc_id`` ascending, everywhere in ``eval`` (``ranked_ids``), so a run file, the
metrics and a report always agree on the order.

Run file formats are selected by ``RunFormat``; TREC is ``qid Q0 docid rank score tag``.
Qrels are ``qid 0 docid grade`` (the second field is ignored, the grade may be
fractional).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import TextIO

__all__ = [
    "DatasetError",
    "Run",
    "RunFileError",
    "RunFormat",
    "parse_grade",
    "ranked_ids",
    "read_qrels",
    "read_run",
    "run_from_rankings",
    "write_qrels",
    "write_run",
]

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]


class RunFormat(StrEnum):
    """Run file formats."""

    TREC = "trec"


class DatasetError(Exception):
    """A dataset file is missing or malformed; the message names the file, line and fix."""


class RunFileError(Exception):
    """A run cannot be written or a run file is malformed; the message says where and why."""


def ranked_ids(scores: Mapping[str, float]) -> list[str]:
    """Doc ids ordered by score descending, ties by doc id ascending.

    >>> ranked_ids({"b": 1.0, "a": 1.0, "c": 2.0})
    ['c', 'a', 'b']
    """
    return sorted(scores, key=lambda doc_id: (-scores[doc_id], doc_id))


def run_from_rankings(rankings: Mapping[str, Sequence[str]]) -> Run:
    """Turn ranked id lists into a run whose scores (``len - position``) keep that order.

    Raises:
        ValueError: a list holds the same id twice.
    """
    run: Run = {}
    for qid, ids in rankings.items():
        scores = {doc_id: float(len(ids) - i) for i, doc_id in enumerate(ids)}
        if len(scores) != len(ids):
            raise ValueError(f"ranking of query {qid!r} lists an id twice; deduplicate it first")
        run[qid] = scores
    return run


def _check_token(kind: str, value: str) -> None:
    if not value or any(c.isspace() for c in value):
        raise RunFileError(
            f"{kind} {value!r} is empty or contains whitespace, which TREC run files cannot hold"
        )


def _write_trec(run: Mapping[str, Mapping[str, float]], out: TextIO, tag: str, depth: int | None):
    _check_token("tag", tag)
    for qid in sorted(run):
        _check_token("query id", qid)
        scores = run[qid]
        for rank, doc_id in enumerate(ranked_ids(scores)[:depth], start=1):
            _check_token("doc id", doc_id)
            score = float(scores[doc_id])
            if not math.isfinite(score):
                raise RunFileError(f"query {qid!r}, doc {doc_id!r}: score {score} is not finite")
            out.write(f"{qid} Q0 {doc_id} {rank} {score!r} {tag}\n")


def _fields(path: Path) -> Iterator[tuple[str, str, list[str]]]:
    """``(path:line, line, whitespace-split fields)`` of each non-blank line."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if fields:
                yield f"{path}:{number}", line, fields


def _read_trec(path: Path) -> Run:
    run: Run = {}
    for where, _, fields in _fields(path):
        if len(fields) != 6:
            raise RunFileError(
                f"{where}: expected 6 fields 'qid Q0 docid rank score tag', got {len(fields)}"
            )
        qid, _, doc_id, _, raw_score, _ = fields
        try:
            score = float(raw_score)
        except ValueError:
            raise RunFileError(f"{where}: score {raw_score!r} is not a number") from None
        scores = run.setdefault(qid, {})
        if doc_id in scores:
            raise RunFileError(f"{where}: doc {doc_id!r} appears twice for query {qid!r}")
        scores[doc_id] = score
    return run


_WRITERS: dict[
    RunFormat, Callable[[Mapping[str, Mapping[str, float]], TextIO, str, int | None], None]
]
_WRITERS = {RunFormat.TREC: _write_trec}
_READERS: dict[RunFormat, Callable[[Path], Run]] = {RunFormat.TREC: _read_trec}


def write_run(
    run: Mapping[str, Mapping[str, float]],
    path: Path,
    *,
    fmt: RunFormat = RunFormat.TREC,
    tag: str = "shopsearch",
    depth: int | None = None,
) -> None:
    """Write ``run`` to ``path``: queries sorted by id, each query's docs in rank order
    (``ranked_ids``), at most ``depth`` per query (all when ``None``).

    Scores are written with ``repr`` so ``read_run`` gets the same floats back.

    Raises:
        RunFileError: an id or the tag is empty or holds whitespace, or a score is not finite.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        _WRITERS[RunFormat(fmt)](run, out, tag, depth)
    logger.info("wrote run %s (%d queries)", path, len(run))


def read_run(path: Path, *, fmt: RunFormat = RunFormat.TREC) -> Run:
    """Read a run file written by ``write_run`` (or any TREC run file).

    Raises:
        RunFileError: the file is missing or a line is malformed.
    """
    if not path.is_file():
        raise RunFileError(f"{path}: run file not found")
    return _READERS[RunFormat(fmt)](path)


def parse_grade(raw: str, where: str, fix: str) -> float:
    """``raw`` as a finite float; :class:`DatasetError` naming ``where`` and ``fix`` if not."""
    try:
        grade = float(raw)
    except ValueError:
        raise DatasetError(f"{where}: grade {raw!r} is not a number; {fix}") from None
    if not math.isfinite(grade):
        raise DatasetError(f"{where}: grade {raw!r} is not finite; {fix}")
    return grade


def read_qrels(
    path: Path, *, known: Mapping[str, object] | None = None, known_in: Path | None = None
) -> dict[str, dict[str, float]]:
    """``{qid: {docid: grade}}`` of a qrels file; with ``known``, every query of it starts
    with no judgments and a qrels line naming another query is an error (the queries
    file ``known_in`` is named in the message).

    Raises:
        DatasetError: the file is missing, a line does not have 4 fields, a grade is not
            a finite number, a pair is judged twice, or a query is unknown.
    """
    if not path.is_file():
        raise DatasetError(f"{path}: qrels file not found; expected lines 'qid 0 docid grade'")
    judgments: dict[str, dict[str, float]] = {qid: {} for qid in known or {}}
    for where, line, fields in _fields(path):
        if len(fields) != 4:
            raise DatasetError(
                f"{where}: expected 4 fields 'qid 0 docid grade', got {len(fields)} in "
                f"{line.strip()[:80]!r}; ids must not contain spaces"
            )
        qid, _, docid, raw_grade = fields
        grade = parse_grade(raw_grade, where, "the 4th field is the grade, e.g. 2 or 2.33")
        if known is not None and qid not in judgments:
            raise DatasetError(
                f"{where}: query {qid!r} is not in {known_in}; add it there or drop the line"
            )
        if docid in judgments.setdefault(qid, {}):
            raise DatasetError(f"{where}: {qid} {docid} is judged twice; keep one line per pair")
        judgments[qid][docid] = grade
    return judgments


def write_qrels(judgments: Mapping[str, Mapping[str, float]], path: Path) -> None:
    """Write ``qid 0 docid grade`` lines (grades with ``repr``, read back exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as out:
        for qid, grades in judgments.items():
            for docid, grade in grades.items():
                out.write(f"{qid} 0 {docid} {grade!r}\n")
