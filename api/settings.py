"""Service settings, read from ``SHOPSEARCH_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Everything the API and the in-process ``SearchService`` can be configured with.

    Each field reads ``SHOPSEARCH_<NAME>`` (e.g. ``SHOPSEARCH_INDEX_DIR``).
    """

    model_config = SettingsConfigDict(env_prefix="SHOPSEARCH_", extra="ignore")

    index_dir: Path = Field(
        Path("var/index"), description="Directory holding CURRENT and snapshots/."
    )
    model_dir: Path | None = Field(
        None, description="Two-tower model directory; default: bundled all-MiniLM-L6-v2."
    )
    reranker_dir: Path | None = Field(
        None, description="Cross-encoder directory; unset: the rerank stage is skipped."
    )
    device: str = Field("auto", description="'auto' (GPU when present), 'cpu' or 'cuda'.")
    leg_depth: int = Field(100, ge=1, le=10_000, description="Candidates asked of each leg.")
    max_depth: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Widening limit of leg depth when filters leave too few.",
    )
    fusion: Literal["rrf", "weighted"] = Field("rrf", description="Default fusion method.")
    lexical_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of BM25 in weighted fusion."
    )
    rerank_depth: int = Field(50, ge=1, le=500, description="Fused candidates the reranker scores.")
    rerank_batch_size: int = Field(32, ge=1, le=1024)
    nprobe: int | None = Field(None, ge=1, description="Override the snapshot's IVF nprobe.")
    refine_factor: int | None = Field(None, ge=1, description="Override the refine depth factor.")
    query_cache_size: int = Field(
        10_000, ge=0, description="Query embeddings kept in an LRU cache (0 disables)."
    )
    reload_interval_s: float = Field(
        2.0,
        ge=0.0,
        description="How often the server checks CURRENT for a new snapshot (0: never).",
    )
    admin_token: str | None = Field(
        None, description="Bearer token for /v1/admin/*; unset disables them."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
