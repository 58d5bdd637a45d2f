"""Rerank: cross-encoder scoring of (query, item text) pairs, and its training."""

from shopsearch.rerank.cross_encoder import Reranker, RerankerError

__all__ = ["Reranker", "RerankerError"]
