"""A persistent cache of item embeddings, keyed by model checksum and item text.

Nightly rebuilds re-encode a catalog that has mostly not changed; encoding is the
slowest stage of a build (about 200-500 titles/s on 2 CPU cores), so vectors of texts
seen before are reused. One cache per model (``<dir>/<model sha256[:16]>/``): a change
of model never reuses stale vectors.

Keys and vectors live in one file, ``cache.npz``, committed by one atomic rename (temp
file, fsync, ``os.replace``): a build killed while saving leaves the previous cache whole,
never keys of one save beside vectors of another. The temp files of killed saves are
removed by the next load. A cache in the older two-file layout (``keys.npy`` +
``vectors.npy``) is still read, and replaced by ``cache.npz`` at the next save.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shopsearch.indexer.crashpoints import crashpoint
from shopsearch.indexer.durable import remove_stale_temp_files, write_atomic

__all__ = ["EmbeddingCache"]

log = logging.getLogger(__name__)

KEY_BYTES = 16  # first 16 bytes of sha256(text): collisions are negligible
CACHE_FILE = "cache.npz"
_LEGACY_FILES = ("keys.npy", "vectors.npy")


def _key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:KEY_BYTES]


class EmbeddingCache:
    """Vectors of item texts for one model, stored in ``<dir>/<sha256[:16]>/cache.npz``."""

    def __init__(self, directory: Path, model_sha256: str, dim: int) -> None:
        self.dir = Path(directory) / model_sha256[:16]
        self.dim = dim

    def _load(self) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
        # Keys are raw bytes in an (n, 16) uint8 array: numpy's fixed-width bytes type
        # ("S16") strips trailing zero bytes, so such keys never matched again.
        remove_stale_temp_files(self.dir)  # of saves that were killed
        keys, vectors = self._read()
        if keys is not None and vectors is not None:
            if (
                keys.dtype == np.uint8
                and keys.ndim == 2
                and keys.shape == (len(vectors), KEY_BYTES)
                and vectors.ndim == 2
                and vectors.shape[1] == self.dim
            ):
                return keys, vectors.astype(np.float32, copy=False)
            log.warning(
                "embedding cache %s is inconsistent or of an old format; ignoring it", self.dir
            )
        return np.zeros((0, KEY_BYTES), np.uint8), np.zeros((0, self.dim), np.float32)

    def _read(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        path = self.dir / CACHE_FILE
        try:
            if path.is_file():
                with np.load(path) as data:
                    return data["keys"], data["vectors"]
            keys_path, vectors_path = (self.dir / name for name in _LEGACY_FILES)
            if keys_path.is_file() and vectors_path.is_file():
                return np.load(keys_path), np.load(vectors_path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("embedding cache %s cannot be read (%s); ignoring it", self.dir, exc)
        return None, None

    def encode(
        self,
        texts: Sequence[str],
        encode: Callable[[Sequence[str]], npt.NDArray[np.float32]],
    ) -> tuple[npt.NDArray[np.float32], int]:
        """Vectors for ``texts`` (shape ``(len(texts), dim)``), encoding only the misses.

        ``encode`` is called once with the texts not in the cache. Returns the vectors and
        the number of cache hits. The cache is then rewritten with the union.
        """
        keys, vectors = self._load()
        position = {row.tobytes(): i for i, row in enumerate(keys)}
        wanted = [_key(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: dict[bytes, list[int]] = {}
        for i, k in enumerate(wanted):
            j = position.get(k)
            if j is None:
                missing.setdefault(k, []).append(i)
            else:
                out[i] = vectors[j]
        hits = len(texts) - sum(len(v) for v in missing.values())
        if missing:
            firsts = [idx[0] for idx in missing.values()]
            fresh = encode([texts[i] for i in firsts])
            for new, idx in zip(fresh, missing.values(), strict=True):
                out[idx] = new
            fresh_keys = np.frombuffer(b"".join(missing), dtype=np.uint8).reshape(-1, KEY_BYTES)
            keys = np.concatenate([keys, fresh_keys])
            vectors = np.vstack([vectors, fresh.astype(np.float32)])
            self._save(keys, vectors)
        return out, hits

    def _save(self, keys: npt.NDArray[np.uint8], vectors: npt.NDArray[np.float32]) -> None:
        """Commit keys and vectors together: one file, one atomic rename."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.dir / CACHE_FILE,
            lambda fh: np.savez(fh, keys=keys, vectors=vectors),
            before_commit=lambda: crashpoint("cache.before-commit"),
        )
        for name in _LEGACY_FILES:  # superseded by cache.npz
            (self.dir / name).unlink(missing_ok=True)
