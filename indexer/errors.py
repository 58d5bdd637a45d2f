"""Errors of snapshots, in a module of their own so that :mod:`indexer.snapshot` and the
lexical lifecycles it drives (:mod:`indexer.lexical_lifecycle`) both raise them without
importing each other. Import them from :mod:`indexer.snapshot`, which re-exports them."""

from __future__ import annotations

from shopsearch.retrieval.types import ShopsearchError

__all__ = ["SnapshotError"]


class SnapshotError(ShopsearchError):
    """A snapshot is missing, damaged, mismatched with the models, or failed validation."""
