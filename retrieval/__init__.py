"""Retrieval: shared types, the two towers, vector and lexical indexes, fusion and filters.

The foundation package: it imports nothing else from the project.
"""

from shopsearch.retrieval.item_text import item_text
from shopsearch.retrieval.types import Candidate, Product, ShopsearchError

__all__ = ["Candidate", "Product", "ShopsearchError", "item_text"]
