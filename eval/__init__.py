"""Offline evaluation: judged-query datasets, protocol A/B metrics (via ranx), TREC run
files, reports with plots, the quality gate, a catalog scale generator and an HTTP load
generator.

Everything here works on plain data (dicts, lists, callables) and knows nothing about
the search engine; ``api/`` wires a ``SearchService`` into it. Import the submodules
directly, e.g. ``from eval.metrics import evaluate_protocol_a``.
"""

from __future__ import annotations

__all__: list[str] = []
