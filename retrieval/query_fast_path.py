"""The query tower on onnxruntime without sentence-transformers' ``encode`` loop.

A search encodes one short query. Through ``SentenceTransformer.encode_query`` that costs
the graph plus about 1-1.5 ms of Python around it (the batching loop, features moved
into torch tensors and back, pooling and normalising in torch), measured on two cores
with the Home Depot queries. :class:`DirectQueryTower` runs the same steps itself:
the query route's tokenizer, the exported graph on numpy arrays, pooling and
normalising in numpy. It gives the same vectors (cosine 1.0000 against
``encode_query``; tests/test_query_fast_path.py holds it to that on the plain towers and
on separate towers under a ``Router``).

It also keeps a second session on the same graph for a *solo* call: when the caller
knows it is the only search in flight, the graph runs on ``solo_threads`` intra-op
threads with spin-waiting on (onnxruntime's fastest setting for a lone caller; the
query's graph takes 3.1 ms instead of 5.8 ms on two cores); otherwise on the shared
session (its own intra-op setting, normally one thread, so concurrent searches do not
fight over cores). The second session holds its own copy of the weights (about 90 MB
for MiniLM fp32, 23 MB int8).

:func:`direct_query_tower` returns None where the model is not of the shape it knows
(a Transformer on an exported graph, mean or CLS pooling, optionally Normalize; a prompt
only where pooling includes it): such a model keeps sentence-transformers' path.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from shopsearch.retrieval.onnx_export import OrtTransformerModel, solo_session

__all__ = ["DirectQueryTower", "direct_query_tower"]

log = logging.getLogger(__name__)

#: Pooling modes computed here; any other keeps sentence-transformers' path.
_POOLING = ("mean", "cls")


class DirectQueryTower:
    """``encode(texts, solo=...) -> (len(texts), dim)`` float32, unit length, equal to
    ``SentenceTransformer.encode_query(texts, normalize_embeddings=True)``.

    Thread-safe (onnxruntime sessions and fast tokenizers may be called concurrently).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int | None,
        graph: OrtTransformerModel,
        pooling: str,
        prompt: str,
        *,
        solo_threads: int = 0,
    ) -> None:
        self._tokenizer = tokenizer
        self._max_length = max_length
        self._graph = graph
        self._pooling = pooling
        self._prompt = prompt
        self._solo = solo_session(graph, solo_threads) if solo_threads > 0 else None

    @property
    def has_solo(self) -> bool:
        """Whether a solo call runs on its own many-threaded session."""
        return self._solo is not None

    def encode(self, texts: Sequence[str], *, solo: bool = False) -> npt.NDArray[np.float32]:
        """Encode ``texts``; ``solo``: the caller is the only search in flight, so the
        graph may use every core (ignored when there is no solo session)."""
        if not texts:
            raise ValueError("encode needs at least one text")
        batch = [self._prompt + t for t in texts] if self._prompt else list(texts)
        tokens = self._tokenizer(
            batch,
            padding=True,
            truncation=self._max_length is not None,
            max_length=self._max_length,
            return_tensors="np",
        )
        mask = np.asarray(tokens["attention_mask"], dtype=np.int64)
        feeds: dict[str, npt.NDArray[np.int64]] = {}
        for name in self._graph.input_names:
            if name in tokens:
                feeds[name] = np.asarray(tokens[name], dtype=np.int64)
            elif name == "token_type_ids":
                feeds[name] = np.zeros_like(mask)
            else:
                raise ValueError(f"the query tower's graph needs input {name!r}")
        session = self._solo if solo and self._solo is not None else self._graph.session
        (hidden,) = session.run([self._graph.output], feeds)
        hidden = np.asarray(hidden, dtype=np.float32)
        if self._pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            weights = mask[:, :, None].astype(np.float32)
            # sentence-transformers clamps the token count at 1e-9 the same way.
            pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: npt.NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(
            np.float32, copy=False
        )
        return out


def _query_route(model: Any) -> list[Any] | None:
    """The modules a query passes through: the model's own, or under a ``Router`` the
    route of the ``query`` task (None when that cannot be resolved)."""
    modules = list(model)
    if len(modules) == 1 and type(modules[0]).__name__ == "Router":
        router = modules[0]
        try:
            route = router._resolve_route(task="query", modality="text")
        except (ValueError, AttributeError):
            return None
        return list(router.sub_modules[route])
    return modules


def _query_prompt(model: Any) -> str | None:
    """The prompt ``encode_query`` prepends: the ``query`` prompt, else the default one
    (sentence-transformers' rule), else none (empty string)."""
    prompts: dict[str, str] = dict(getattr(model, "prompts", None) or {})
    if "query" in prompts:
        return prompts["query"]
    default = getattr(model, "default_prompt_name", None)
    return prompts.get(default, "") if default else ""


def direct_query_tower(model: Any, *, solo_threads: int = 0) -> DirectQueryTower | None:
    """A :class:`DirectQueryTower` for ``model`` (a ``SentenceTransformer`` whose
    Transformer modules run on exported graphs, see :func:`onnx_export.attach`), or None
    when its query route has a shape this module does not compute (it says why in the
    log). ``solo_threads`` > 0 adds the solo session with that many intra-op threads."""
    modules = _query_route(model)
    if modules is None or len(modules) not in (2, 3):
        log.info("query tower: sentence-transformers path (unrecognised module layout)")
        return None
    transformer, pooling, *rest = modules
    graph = getattr(transformer, "model", None)
    names = [type(m).__name__ for m in modules]
    if not isinstance(graph, OrtTransformerModel) or graph.output != "last_hidden_state":
        log.info("query tower: sentence-transformers path (no exported graph)")
        return None
    mode = getattr(pooling, "pooling_mode", None)
    if names[1] != "Pooling" or mode not in _POOLING or (rest and names[2] != "Normalize"):
        log.info("query tower: sentence-transformers path (modules %s, pooling %s)", names, mode)
        return None
    prompt = _query_prompt(model)
    if prompt is None or (prompt and not getattr(pooling, "include_prompt", True)):
        log.info("query tower: sentence-transformers path (pooling leaves the prompt out)")
        return None
    tokenizer = getattr(transformer, "tokenizer", None)
    if tokenizer is None:
        return None
    return DirectQueryTower(
        tokenizer,
        getattr(transformer, "max_seq_length", None),
        graph,
        str(mode),
        prompt,
        solo_threads=solo_threads,
    )
