"""A sequence model over a shopper's history: a small causal transformer (SASRec-like)
whose item representations include the item tower's text embeddings.

An item's representation is ``id embedding + W . text embedding`` (the text embedding is
the frozen item-tower vector of its description, ``W`` is learned). The same
representation is the transformer's input for an item of the history and the output
vector a candidate is scored with (tied), so an item nobody bought when the model was
trained still has both: its id embedding is zero and its text carries it (cold start).
Training drops id embeddings at random (:attr:`SequenceConfig.id_dropout`) so the text
path is learned, not merely present.

The network reads the last :attr:`SequenceConfig.max_len` items of a history, oldest
first, and the hidden state of the newest item scores every item of the vocabulary
(``h . rep(item) + bias(item)``). It is trained (:mod:`indexer.training.sequence`) on
baskets: the items of a shopper's earlier invoices predict the items of the next one.

A saved model is a directory::

    model_card.json       version, trained range, metrics, parameters, checksums, encoder
    weights.safetensors   the network (without the text matrix)
    items.npz             item ids (vocabulary order), their text embeddings, n_trained

:class:`SequenceRecommender` loads it and implements
:class:`retrieval.recommend.base.Recommender`; :meth:`SequenceRecommender.add_items`
extends the vocabulary with text embeddings of products added after training. Nothing
here sets torch's thread count: serving decides that.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from shopsearch.retrieval.checksums import file_sha256
from shopsearch.retrieval.encoders import ModelError
from shopsearch.retrieval.recommend.base import HistoryItem, Scored
from shopsearch.retrieval.recommend.interactions import ItemVocab

__all__ = [
    "CARD_FILE",
    "FORMAT_VERSION",
    "ITEMS_FILE",
    "WEIGHTS_FILE",
    "SequenceConfig",
    "SequenceModelError",
    "SequenceNet",
    "SequenceRecommender",
    "file_sha256",
]

FORMAT_VERSION = 1
CARD_FILE = "model_card.json"
WEIGHTS_FILE = "weights.safetensors"
ITEMS_FILE = "items.npz"


class SequenceModelError(ModelError):
    """A sequence model directory is missing, damaged, or does not fit its inputs."""


@dataclass(frozen=True, slots=True)
class SequenceConfig:
    """Shape and regularisation of :class:`SequenceNet` (recorded in the model card)."""

    d_model: int = 64
    n_heads: int = 2
    n_layers: int = 1
    max_len: int = 50
    dropout: float = 0.3
    #: Probability that an item's id embedding is zeroed in a training step (inputs and
    #: outputs alike), so the model learns to score items by their text alone.
    id_dropout: float = 0.3

    def __post_init__(self) -> None:
        if self.d_model <= 0 or self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be positive and divisible by n_heads "
                f"({self.n_heads})"
            )
        if self.n_layers < 1 or self.max_len < 1:
            raise ValueError("n_layers and max_len must be at least 1")
        for name in ("dropout", "id_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequenceConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class SequenceNet(nn.Module):
    """The network. Tokens are vocabulary indices + 1 (0 pads, on the right).

    ``n_trained`` items (vocabulary indices ``0..n_trained-1``) have learned id
    embeddings and biases; the others are represented by their text only. ``text`` is the
    frozen ``(n_items, text_dim)`` matrix; it is a buffer that is not saved with the weights
    (it lives in ``items.npz``), so the vocabulary can grow without touching them.
    """

    def __init__(self, n_trained: int, text: npt.NDArray[np.float32], config: SequenceConfig):
        super().__init__()
        d = config.d_model
        self.config = config
        self.n_trained = n_trained
        self.id_emb = nn.Embedding(n_trained + 1, d, padding_idx=0)
        nn.init.normal_(self.id_emb.weight, std=0.02)
        with torch.no_grad():
            self.id_emb.weight[0].zero_()
        self.item_bias = nn.Parameter(torch.zeros(n_trained + 1))
        self.text_proj = nn.Linear(text.shape[1], d, bias=False)
        self.pos_emb = nn.Embedding(config.max_len, d)
        nn.init.normal_(self.pos_emb.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d,
            config.n_heads,
            dim_feedforward=4 * d,
            # Dropout inside the layers (attention, feed-forward, residuals) drew a third
            # of the training time on a CPU (random numbers); dropout on the inputs and
            # the output state regularises nearly as well at a fraction of the cost.
            dropout=0.0,
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(config.dropout)
        self.text: torch.Tensor
        self.register_buffer("text", self._padded_text(text), persistent=False)

    @staticmethod
    def _padded_text(text: npt.NDArray[np.float32]) -> torch.Tensor:
        out = torch.zeros(len(text) + 1, text.shape[1])
        out[1:] = torch.from_numpy(np.asarray(text, dtype=np.float32))
        return out

    def set_text(self, text: npt.NDArray[np.float32]) -> None:
        """Replace the text matrix (a grown vocabulary; the first rows must be unchanged)."""
        self.text = self._padded_text(text)

    def _id_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        # Items beyond the trained ones have no id embedding: they map to the zero row.
        return torch.where(tokens <= self.n_trained, tokens, torch.zeros_like(tokens))

    def representations(
        self, tokens: torch.Tensor, id_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``rep(item)`` of each token; ``id_keep`` (per token row of the id table, 0/1)
        drops id embeddings in training."""
        ids = self._id_tokens(tokens)
        id_vec = self.id_emb(ids)
        if id_keep is not None:
            id_vec = id_vec * id_keep[ids].unsqueeze(-1)
        rep: torch.Tensor = id_vec + self.text_proj(self.text[tokens])
        return rep

    def output_table(
        self, id_keep: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n_items, d)`` output vectors and ``(n_items,)`` biases of the vocabulary."""
        tokens = torch.arange(1, self.text.shape[0], device=self.text.device)
        bias = self.item_bias[self._id_tokens(tokens)]
        return self.representations(tokens, id_keep), bias

    def encode(
        self, tokens: torch.Tensor, lengths: torch.Tensor, id_keep: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Hidden state ``(batch, d)`` after the newest item of each right-padded sequence.

        ``tokens`` is ``(batch, L)`` with ``L <= max_len``, oldest first; ``lengths >= 1``.
        """
        batch, length = tokens.shape
        x = self.representations(tokens, id_keep) * (self.config.d_model**0.5)
        # Positions count back from the newest item, so "most recent" is one embedding
        # whatever the history's length.
        steps = torch.arange(length, device=tokens.device).unsqueeze(0)
        back = (lengths.unsqueeze(1) - 1 - steps).clamp(min=0)
        x = self.drop(x + self.pos_emb(back))
        # Causal: with right padding a real item never attends to a pad, so no padding
        # mask is needed (and no row is ever fully masked).
        causal = torch.triu(torch.ones(length, length, dtype=torch.bool, device=x.device), 1)
        h = self.norm(self.encoder(x, mask=causal, is_causal=True))
        last: torch.Tensor = self.drop(h[torch.arange(batch, device=h.device), lengths - 1])
        return last


def save_model(
    out_dir: Path,
    net: SequenceNet,
    items: Sequence[str],
    text: npt.NDArray[np.float32],
    card: Mapping[str, Any],
) -> dict[str, Any]:
    """Write weights, items and the model card (with checksums) into ``out_dir``; return
    the card as written. Files are written to temporary names and renamed, the card last,
    so a directory with a card is complete."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tmp = out_dir / f".{WEIGHTS_FILE}.tmp"
    save_file(state, str(tmp))
    os.replace(tmp, out_dir / WEIGHTS_FILE)
    tmp = out_dir / ".items.tmp.npz"
    np.savez(
        tmp,
        items=np.asarray(items, dtype=str),
        text=np.asarray(text, dtype=np.float32),
        n_trained=np.int64(net.n_trained),
    )
    os.replace(tmp, out_dir / ITEMS_FILE)
    full = {
        **card,
        "format_version": FORMAT_VERSION,
        "parameters": net.config.to_dict(),
        "n_trained_items": net.n_trained,
        "n_items": len(items),
        "weights_sha256": file_sha256(out_dir / WEIGHTS_FILE),
        "items_sha256": file_sha256(out_dir / ITEMS_FILE),
    }
    tmp = out_dir / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(full, indent=2, default=str))
    os.replace(tmp, out_dir / CARD_FILE)
    return full


class SequenceRecommender:
    """A trained sequence model for inference (implements ``Recommender``).

    Scores are ``h . rep(item) + bias(item)`` (unbounded; higher is better). Only items
    of the vocabulary are scored; history items outside it are ignored.
    """

    name = "sequence"

    def __init__(
        self,
        net: SequenceNet,
        items: Sequence[str],
        text: npt.NDArray[np.float32],
        card: Mapping[str, Any],
    ) -> None:
        self.net = net.eval()
        self.card = dict(card)
        self.version = str(card.get("version", "unversioned"))
        self._vocab = ItemVocab.of(items)
        if len(self._vocab) != len(items):
            raise SequenceModelError("the item list holds duplicates")
        self._text = np.asarray(text, dtype=np.float32)
        self._refresh()

    # -- loading -----------------------------------------------------------------------

    @classmethod
    def load(cls, path: Path | str, *, encoder_sha256: str | None = None) -> SequenceRecommender:
        """Load a model directory written by :func:`save_model`.

        ``encoder_sha256``, when given, must equal the text encoder the model was trained
        with (its text embeddings and those :meth:`add_items` receives must match).

        Raises:
            SequenceModelError: a file is missing, a checksum or shape does not match, or
                the encoder differs.
        """
        from safetensors.torch import load_file

        path = Path(path)
        card_path = path / CARD_FILE
        try:
            card = json.loads(card_path.read_text())
        except FileNotFoundError:
            raise SequenceModelError(
                f"{card_path} is missing: {path} is not a sequence model directory "
                "(train one with indexer.training.sequence.train_sequence)"
            ) from None
        except (OSError, ValueError) as exc:
            raise SequenceModelError(f"{card_path} cannot be read: {exc}") from exc
        if card.get("format_version") != FORMAT_VERSION:
            raise SequenceModelError(
                f"{path}: format_version {card.get('format_version')!r} is not "
                f"{FORMAT_VERSION}; retrain the model with this version of shopsearch"
            )
        for file, key in ((WEIGHTS_FILE, "weights_sha256"), (ITEMS_FILE, "items_sha256")):
            if not (path / file).is_file():
                raise SequenceModelError(f"{path / file} is missing")
            if file_sha256(path / file) != card.get(key):
                raise SequenceModelError(
                    f"{path / file} does not match the {key} of its model card (damaged or "
                    "replaced); retrain or restore the directory"
                )
        trained_with = card.get("text_encoder", {}).get("sha256")
        if encoder_sha256 is not None and trained_with != encoder_sha256:
            raise SequenceModelError(
                f"{path} was trained with text encoder {trained_with!r}, not {encoder_sha256!r}; "
                "serve it with the encoder it was trained with, or retrain"
            )
        with np.load(path / ITEMS_FILE) as data:
            items = [str(i) for i in data["items"]]
            text = data["text"].astype(np.float32)
            n_trained = int(data["n_trained"])
        config = SequenceConfig.from_dict(card.get("parameters", {}))
        net = SequenceNet(n_trained, text, config)
        net.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
        return cls(net, items, text, card)

    def save(self, path: Path | str) -> dict[str, Any]:
        """Write this model (with any added items) to ``path``; returns the card."""
        return save_model(Path(path), self.net, self._vocab.items, self._text, self.card)

    # -- vocabulary --------------------------------------------------------------------

    @property
    def items(self) -> tuple[str, ...]:
        """The vocabulary, in the order of :meth:`scores`."""
        return self._vocab.items

    @property
    def text_dim(self) -> int:
        return int(self._text.shape[1])

    def add_items(self, vectors: Mapping[str, npt.NDArray[np.float32]]) -> int:
        """Add products that came after training, scored by their text embedding (from the
        same item tower, ``encode_document`` of their text). Items already known keep their
        representation. Returns how many were added.

        Raises:
            SequenceModelError: a vector has the wrong dimension or is not finite.
        """
        new = [item for item in vectors if item not in self._vocab.index]
        if not new:
            return 0
        matrix = np.stack([np.asarray(vectors[i], dtype=np.float32).reshape(-1) for i in new])
        if matrix.shape[1] != self.text_dim or not np.isfinite(matrix).all():
            raise SequenceModelError(
                f"text embeddings must be finite vectors of dimension {self.text_dim} (the "
                f"encoder the model was trained with), got dimension {matrix.shape[1]}"
            )
        self._text = np.concatenate([self._text, matrix])
        self._vocab = ItemVocab.of([*self._vocab.items, *new])
        self.net.set_text(self._text)
        self._refresh()
        return len(new)

    def _refresh(self) -> None:
        with torch.inference_mode():
            table, bias = self.net.output_table()
        self._out = table.numpy().astype(np.float32)
        self._bias = bias.numpy().astype(np.float32)

    # -- scoring -----------------------------------------------------------------------

    def tokens(self, history: Sequence[HistoryItem]) -> list[int]:
        """Vocabulary indices of a newest-first history, oldest first, the last
        ``max_len`` known items; one per (item, time) so a basket's repeated lines count
        once."""
        seen: set[tuple[str, Any]] = set()
        out: list[int] = []
        index = self._vocab.index
        for h in history:
            i = index.get(h.item)
            if i is None or (h.item, h.ts) in seen:
                continue
            seen.add((h.item, h.ts))
            out.append(i)
            if len(out) == self.net.config.max_len:
                break
        out.reverse()
        return out

    def scores(self, history: Sequence[HistoryItem]) -> npt.NDArray[np.float32] | None:
        """Score of every vocabulary item (order of :attr:`items`) for ``history``;
        ``None`` when no item of the history is known."""
        return self._scores_for_tokens(self.tokens(history))

    def _scores_for_tokens(self, tokens: list[int]) -> npt.NDArray[np.float32] | None:
        if not tokens:
            return None
        with torch.inference_mode():
            t = torch.tensor([[i + 1 for i in tokens]], dtype=torch.long)
            h = self.net.encode(t, torch.tensor([len(tokens)])).numpy()[0]
        out: npt.NDArray[np.float32] = self._out @ h + self._bias
        return out

    def _top(
        self, scores: npt.NDArray[np.float32] | None, k: int, exclude: frozenset[str]
    ) -> list[Scored]:
        if scores is None or k <= 0:
            return []
        scores = scores.copy()
        drop = [i for i in (self._vocab.index.get(e) for e in exclude) if i is not None]
        scores[drop] = -np.inf
        k = min(k, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        items = self._vocab.items
        return [Scored(items[i], float(scores[i])) for i in top if np.isfinite(scores[i])]

    def for_history(
        self, history: Sequence[HistoryItem], k: int, exclude: frozenset[str] = frozenset()
    ) -> list[Scored]:
        """The ``k`` items the model expects next, best first; ``[]`` for a history with
        no known item (the caller falls back)."""
        return self._top(self.scores(history), k, exclude)

    def similar(self, item: str, k: int, exclude: frozenset[str] = frozenset()) -> list[Scored]:
        """What the model expects next after a history of ``item`` alone ("bought after /
        with"); ``item`` itself is never returned; ``[]`` for an unknown item."""
        i = self._vocab.index.get(item)
        if i is None:
            return []
        return self._top(self._scores_for_tokens([i]), k, exclude | {item})
