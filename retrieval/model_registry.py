"""A versioned registry of trained models on disk, each with a model card.

Layout::

    <models-dir>/
      towers/<version>/        # a sentence-transformers directory (the two towers)
        model_card.json  loss_curve.png  ...weights
      reranker/<version>/      # a CrossEncoder directory
        model_card.json  loss_curve.png  ...weights
      recommender/<version>/   # retrieval.recommend.bundle: recommender.npz + config.json
        model_card.json
      <kind>/.staging-<version>/   # a model being written; never listed or resolved

Versions are UTC timestamps (``20260509T120000Z``), so they sort by creation time and
``<kind>/latest`` is the last one. A trainer saves into :func:`staging_dir`, then
:func:`register` writes the card (with the weights' sha256 from
:func:`retrieval.encoders.model_info`) and renames the directory into place, so a
half-written model is never resolvable.

A model spec (what ``build``, ``serve`` and ``eval`` accept) is either a directory path
or ``<kind>/<version>`` or ``<kind>/latest``; :func:`resolve_model` turns it into a
path and says which choices exist when it cannot.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shopsearch.retrieval.encoders import ModelError, model_info

__all__ = [
    "CARD_FILE",
    "KINDS",
    "LATEST",
    "RegisteredModel",
    "RegistryError",
    "SpecWatch",
    "library_versions",
    "list_models",
    "load_card",
    "new_version",
    "register",
    "resolve_model",
    "staging_dir",
    "towers_fine_tuned",
]

log = logging.getLogger(__name__)

#: The kinds of model the registry holds.
KINDS: tuple[str, ...] = ("towers", "reranker", "recommender", "sequence", "personal")
#: Kinds whose arrays are ``.npz`` files rather than transformer weights.
_ARRAY_KINDS = frozenset({"recommender", "personal"})
#: File name of the model card inside a version directory.
CARD_FILE = "model_card.json"
#: The version alias that resolves to the newest version of a kind.
LATEST = "latest"
_STAGING_PREFIX = ".staging-"


class RegistryError(ModelError):
    """A model spec does not resolve, a kind is unknown, or a card cannot be read."""


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    """A model in the registry: ``kind``, ``version``, its directory and its card."""

    kind: str
    version: str
    path: Path
    card: dict[str, Any]

    @property
    def spec(self) -> str:
        """``<kind>/<version>``, what :func:`resolve_model` accepts."""
        return f"{self.kind}/{self.version}"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise RegistryError(f"unknown model kind {kind!r}; valid kinds are: {', '.join(KINDS)}")


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a model's numerics (for the model card)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for package in ("torch", "transformers", "sentence-transformers", "numpy", "shopsearch"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def new_version(models_dir: Path, kind: str) -> str:
    """A fresh version name for ``kind``: the UTC time, with ``-2``, ``-3``... on a clash."""
    _check_kind(kind)
    root = Path(models_dir) / kind
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    version, n = stamp, 2
    while (root / version).exists() or (root / f"{_STAGING_PREFIX}{version}").exists():
        version, n = f"{stamp}-{n}", n + 1
    return version


def staging_dir(models_dir: Path, kind: str, version: str) -> Path:
    """The directory a trainer writes ``version`` into before :func:`register` (created empty)."""
    _check_kind(kind)
    path = Path(models_dir) / kind / f"{_STAGING_PREFIX}{version}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def register(models_dir: Path, kind: str, version: str, card: dict[str, Any]) -> RegisteredModel:
    """Write ``card`` into the staged ``version`` and move it into place.

    The card gets ``kind``, ``version``, ``created_at``, ``model`` (id, sha256 of the
    weights) and ``libraries`` added; the rest is the trainer's (base model, data
    checksum, hyper-parameters, metrics, logs).

    Raises:
        RegistryError: nothing is staged for ``version``, or ``version`` already exists.
        ModelError: the staged directory holds no weight files.
    """
    _check_kind(kind)
    root = Path(models_dir) / kind
    staged = root / f"{_STAGING_PREFIX}{version}"
    final = root / version
    if not staged.is_dir():
        raise RegistryError(
            f"nothing staged at {staged}; save the model into staging_dir(...) before register()"
        )
    if final.exists():
        raise RegistryError(f"{kind}/{version} already exists in {models_dir}; use new_version()")
    sha256 = _arrays_sha256(staged) if kind in _ARRAY_KINDS else model_info(staged).sha256
    full_card = {
        "kind": kind,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"id": version, "sha256": sha256},
        "libraries": library_versions(),
        **card,
    }
    tmp = staged / f".{CARD_FILE}.tmp"
    tmp.write_text(json.dumps(full_card, indent=2, sort_keys=False, default=str))
    os.replace(tmp, staged / CARD_FILE)
    os.replace(staged, final)
    log.info("registered %s/%s in %s", kind, version, models_dir)
    return RegisteredModel(kind=kind, version=version, path=final, card=full_card)


def _arrays_sha256(path: Path) -> str:
    """sha256 over the ``.npz`` files of ``path`` (names and bytes), like :func:`model_info`."""
    import hashlib

    files = sorted(p for p in path.rglob("*.npz") if p.is_file())
    if not files:
        raise RegistryError(f"{path} holds no .npz arrays; save the model before register()")
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path).as_posix().encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def load_card(path: Path) -> dict[str, Any]:
    """The model card of the model directory ``path`` (raises :class:`RegistryError`)."""
    card_path = Path(path) / CARD_FILE
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise RegistryError(
            f"{card_path} is missing: {path} is not a registered model "
            "(train one with `shopsearch train towers|reranker`)"
        ) from None
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{card_path} cannot be read: {exc}") from exc
    if not isinstance(card, dict):
        raise RegistryError(f"{card_path} does not hold a JSON object")
    return card


def towers_fine_tuned(path: Path) -> bool:
    """True when the towers in ``path`` were trained by ``shopsearch train towers`` (their
    model card says ``kind: towers``); False for the bundled base model, a directory
    without a card, or an unreadable card. Decides the default fusion
    (:func:`retrieval.fusion.default_fusion`): towers of unknown training are treated as
    base towers, so the default never trusts them over BM25 (set the fusion explicitly
    to use them otherwise)."""
    try:
        card = load_card(path)
    except RegistryError:
        return False
    return card.get("kind") == "towers"


def _versions(models_dir: Path, kind: str) -> list[str]:
    root = Path(models_dir) / kind
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / CARD_FILE).is_file()
    )


def list_models(models_dir: Path, kind: str | None = None) -> list[RegisteredModel]:
    """Registered models, by kind then version (oldest first); one kind when ``kind`` is set.

    Raises:
        RegistryError: ``kind`` is not one of :data:`KINDS`, or a card is unreadable.
    """
    kinds = KINDS
    if kind is not None:
        _check_kind(kind)
        kinds = (kind,)
    out = []
    for k in kinds:
        for version in _versions(models_dir, k):
            path = Path(models_dir) / k / version
            out.append(RegisteredModel(kind=k, version=version, path=path, card=load_card(path)))
    return out


def resolve_model(spec: str | Path, models_dir: Path) -> Path:
    """Turn a model spec into a model directory.

    ``spec`` is ``<kind>/<version>``, ``<kind>/latest`` (the newest of that kind) or a
    path to a model directory. A string whose first part is a kind is looked up in the
    registry; anything else must be an existing directory.

    >>> resolve_model("towers/latest", Path("var/models"))  # doctest: +SKIP
    PosixPath('var/models/towers/20260509T120000Z')

    Raises:
        RegistryError: the kind, version or path does not exist; the message lists the
            valid choices.
    """
    text = str(spec)
    parts = text.strip("/").split("/")
    if len(parts) == 2 and parts[0] in KINDS and not Path(text).is_dir():
        kind, version = parts
        versions = _versions(models_dir, kind)
        if not versions:
            raise RegistryError(
                f"no {kind} model in {models_dir}; train one with `shopsearch train {kind}` "
                "or pass a model directory"
            )
        if version == LATEST:
            version = versions[-1]
        elif version not in versions:
            listed = ", ".join(versions[-10:])
            raise RegistryError(
                f"{kind} version {version!r} not found in {models_dir}; valid versions: "
                f"{listed} (or {kind}/{LATEST})"
            )
        return Path(models_dir) / kind / version
    path = Path(text)
    if path.is_dir():
        return path
    raise RegistryError(
        f"model {text!r} is neither a directory nor a registry spec; use a path, or "
        f"<kind>/<version> or <kind>/{LATEST} with kind one of: {', '.join(KINDS)} "
        f"(`shopsearch models list --models-dir {models_dir}` shows what exists)"
    )


class SpecWatch:
    """A model spec resolved at most once per ``interval_s`` (thread-safe).

    Serving code asks which directory ``personal/latest`` or ``recommender/latest`` is on
    every request; listing the registry each time would be I/O on the hot path. This
    answers from memory between looks, so a newly registered version is picked up at the
    next look, at most ``interval_s`` later. ``current()`` is None while the spec does
    not resolve; ``error`` then says why (the registry's message, for a log line)."""

    def __init__(self, spec: str | Path, models_dir: Path, interval_s: float) -> None:
        self.spec = spec
        self.models_dir = models_dir
        self.interval_s = interval_s
        self.error: str | None = None
        self._path: Path | None = None
        self._checked_at: float | None = None
        self._lock = threading.Lock()

    def current(self) -> Path | None:
        """The spec's directory as of the last look (looking again when it is stale)."""
        now = time.monotonic()
        with self._lock:
            if self._checked_at is not None and now - self._checked_at < self.interval_s:
                return self._path
            self._checked_at = now
            try:
                self._path, self.error = resolve_model(self.spec, self.models_dir), None
            except RegistryError as exc:
                self._path, self.error = None, str(exc)
            return self._path
