"""Service settings, read from ``SHOPSEARCH_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shopsearch.indexer.events.privacy import check_key
from shopsearch.rerank.cross_encoder import RerankerBackend
from shopsearch.rerank.merge import DEFAULT_RERANK_WEIGHT
from shopsearch.retrieval.encoders import EncoderBackend
from shopsearch.retrieval.fusion import BASE_TOWERS_LEXICAL_WEIGHT
from shopsearch.retrieval.search_params import FUSION_NAMES, MAX_NPROBE, FusionName, MergeName

if TYPE_CHECKING:
    from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection
    from shopsearch.retrieval.es_handle import RefreshPolicy

__all__ = ["DEMO_USER_KEY", "LEXICAL_BACKENDS", "Settings"]

#: The pseudonymisation key `shopsearch demo` uses when SHOPSEARCH_USER_KEY is unset.
#: Public, so it protects nothing: never use it for real shoppers.
DEMO_USER_KEY = "shopsearch-demo-key-not-a-secret"

#: Lexical backend a snapshot is built with (``--lexical`` / ``SHOPSEARCH_LEXICAL``).
LexicalBackend = Literal["tantivy", "elasticsearch"]
LEXICAL_BACKENDS: tuple[str, ...] = get_args(LexicalBackend)
#: Vector backend a snapshot is built with (``--vector`` / ``SHOPSEARCH_VECTOR``).
VectorBackend = Literal["faiss", "elasticsearch"]
#: ``dense_vector`` index types of an Elasticsearch vector leg.
EsVectorIndexType = Literal["hnsw", "int8_hnsw", "int4_hnsw", "bbq_hnsw"]


class Settings(BaseSettings):
    """Everything the API and the in-process ``SearchService`` can be configured with.

    Each field reads ``SHOPSEARCH_<NAME>`` (e.g. ``SHOPSEARCH_INDEX_DIR``).
    """

    # hide_input_in_errors: a validation error never echoes a secret it was given.
    model_config = SettingsConfigDict(
        env_prefix="SHOPSEARCH_", extra="ignore", hide_input_in_errors=True
    )

    index_dir: Path = Field(
        Path("var/index"), description="Directory holding CURRENT and snapshots/."
    )
    model_dir: Path | None = Field(
        None, description="Two-tower model directory; default: bundled all-MiniLM-L6-v2."
    )
    merch_dir: Path | None = Field(
        None,
        description="Directory of the versioned merchandising rules and their audit log "
        "(indexer/merch_rules.py); default: <index_dir>/merch.",
    )
    reranker_dir: Path | None = Field(
        None, description="Cross-encoder directory; unset: the rerank stage is skipped."
    )
    device: str = Field("auto", description="'auto' (GPU when present), 'cpu' or 'cuda'.")
    encoder_backend: EncoderBackend = Field(
        "torch",
        description="How the towers run: torch, onnx (onnxruntime fp32) or onnx-int8 "
        "(dynamic int8). A snapshot is served only by the backend that built it.",
    )
    query_backend: Literal["auto", "same", "torch", "onnx", "onnx-int8"] = Field(
        "auto",
        description="How the query tower runs, over the same weights as the item tower (the "
        "catalog's vectors stay as built): 'same' as encoder_backend; 'onnx' gives the "
        "same vectors (cosine 1.0000) in half the time of torch on a CPU; 'onnx-int8' is "
        "faster still and moves vectors slightly; 'auto': on a CPU when the towers run on "
        "torch, onnx for fine-tuned towers and onnx-int8 for base towers (BM25 leads "
        "their answers), else the same (README, 'Query tower runtime').",
    )
    onnx_threads: int = Field(
        1,
        ge=0,
        le=64,
        description="Intra-op threads of the query tower's onnxruntime session (spin-waiting "
        "off). 1: each search worker (max_inflight) uses at most one core, measured "
        "40% less CPU a query than onnxruntime's default with no slower answers; 0: that "
        "default (one spinning thread per core).",
    )
    solo_threads: int | None = Field(
        None,
        ge=0,
        le=64,
        description="Intra-op threads (spin-waiting on) of a second session of the ONNX "
        "query tower, used while a search is the only one in flight: a lone query "
        "encodes in about half the time on two cores. Unset: the usable cores (none on a "
        "single core); 0: no second session (saves one copy of the query tower's weights).",
    )
    leg_depth: int = Field(100, ge=1, le=10_000, description="Candidates asked of each leg.")
    max_depth: int = Field(
        2000,
        ge=1,
        le=100_000,
        description="Widening limit of leg depth when filters leave too few.",
    )
    fusion: Literal["auto"] | FusionName = Field(
        "auto",
        description="Default fusion method. 'auto': RRF with towers fine-tuned by "
        "`shopsearch train towers` (their model card says so), a BM25-led weighted RRF "
        "(base_lexical_weight) with base towers, so a new shop never answers worse than "
        "BM25 alone.",
    )
    lexical_weight: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="Weight of BM25 in the weighted fusions (fusion=weighted or weighted-rrf).",
    )
    base_lexical_weight: float = Field(
        BASE_TOWERS_LEXICAL_WEIGHT,
        ge=0.0,
        le=1.0,
        description="Weight of BM25 in the 'auto' fusion of base (not fine-tuned) towers; "
        "chosen on the Home Depot dev split.",
    )
    rerank_depth: int = Field(50, ge=1, le=500, description="Fused candidates the reranker scores.")
    rerank_weight: float = Field(
        DEFAULT_RERANK_WEIGHT,
        ge=0.0,
        le=1.0,
        description="Weight of the reranker in the merge with the first stage (0: first "
        "stage only, 1: reranker only); chosen on the Home Depot dev split.",
    )
    rerank_merge: MergeName = Field(
        "scores",
        description="How reranker scores merge with the first stage: 'scores' (weighted sum "
        "of standardized reranker, BM25 and cosine scores) or 'ranks' (weighted RRF of the "
        "two orders); see rerank/merge.py.",
    )
    rerank_batch_size: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Pairs per cross-encoder pass; unset: 32 on a CPU, the whole list (up to "
        "512) on a GPU.",
    )
    reranker_backend: RerankerBackend = Field(
        "auto",
        description="How the cross-encoder runs: auto (onnx-int8 on a CPU, torch on a GPU), "
        "torch, onnx (onnxruntime fp32) or onnx-int8 (dynamic int8, the fast CPU path).",
    )
    units: bool = Field(
        True,
        description="Rewrite measurement units in queries the catalog's way ('18inches' -> "
        "'18 in') before retrieval (retrieval/query_rewrite.py).",
    )
    spelling: bool = Field(
        True,
        description="Correct unknown query words to catalog words before retrieval "
        "(retrieval/spelling.py). A request turns both rewrites off with rewrite=false.",
    )
    nprobe: int | None = Field(
        None,
        ge=1,
        le=MAX_NPROBE,
        description="IVF lists probed per query, instead of the snapshot's own; a request's "
        "nprobe overrides it for that request.",
    )
    refine_factor: int | None = Field(
        None,
        ge=1,
        description="PQ candidates re-scored exactly per result, instead of the snapshot's own.",
    )
    live_recall_sample: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="Fraction of live searches with a dense leg whose approximate answer "
        "is compared, off the request path, with an exact search over the same snapshot "
        "(recall@k in /metrics as shopsearch_live_recall; api/quality_monitor.py). "
        "0 turns it off.",
    )
    query_cache_size: int = Field(
        10_000, ge=0, description="Query embeddings kept in an LRU cache (0 disables)."
    )
    query_batch_size: int = Field(
        32,
        ge=0,
        description="Concurrent query encodings batched into one forward pass, at most (0: no batching).",
    )
    # -- caches (rerank/score_cache.py, api/result_cache.py); emptied on every snapshot change --
    rerank_cache_size: int = Field(
        100_000,
        ge=0,
        le=10_000_000,
        description="Cross-encoder scores kept per (rewritten query, product id, reranker "
        "model), least recently used evicted first; about 200 bytes each (0 disables).",
    )
    result_cache_size: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description="Whole answers kept for repeated requests without a shopper (keyed by "
        "every request field that changes the answer), least recently used evicted first; "
        "a few KB each, as JSON (0 disables).",
    )
    result_cache_ttl_s: float = Field(
        300.0,
        ge=0.0,
        le=86_400.0,
        description="Seconds a cached answer is served at most (0: until evicted or the "
        "snapshot changes). Snapshot swaps and updates empty the cache anyway; this bounds "
        "how long a change the server cannot see (e.g. to a shared Elasticsearch index) "
        "stays hidden.",
    )
    degraded_log_interval_s: float = Field(
        10.0,
        ge=0.0,
        description="A stage failure that repeats (e.g. the lexical leg while Elasticsearch "
        "is down) is logged at most once per this many seconds per reason, with a count of "
        "the ones left out (0: log every one).",
    )
    reload_interval_s: float = Field(
        2.0,
        ge=0.0,
        description="How often the server checks CURRENT for a new snapshot (0: never).",
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for /v1/admin/*; unset disables them."
    )
    gc_freeze: bool = Field(
        True,
        description="After each snapshot swap and suggestion build, collect once and "
        "freeze the long-lived objects (gc.freeze), so the collector's full passes skip "
        "them and stop pausing searches (api/heap.py).",
    )

    # -- resource limits (api/admission.py, api/guard.py) --
    deadline_ms: int = Field(
        1000,
        ge=10,
        le=60_000,
        description="Default time budget of a search in ms, time waiting for a worker "
        "included; a request's deadline_ms overrides it. Stages that no longer fit are "
        "cut (listed in the answer's `cut`); a request that could not start in time gets 503.",
    )
    max_inflight: int = Field(
        0,
        ge=0,
        le=256,
        description="Searches computed at once (0: two per CPU core).",
    )
    max_queue: int = Field(
        16,
        ge=0,
        le=10_000,
        description="Searches that may wait for a worker; past that a search is refused "
        "at once with 503 and Retry-After.",
    )
    max_body_bytes: int = Field(
        1 << 20,
        ge=1024,
        description="Largest request body accepted (413 beyond), except admin product upserts.",
    )
    max_admin_body_bytes: int = Field(
        64 << 20,
        ge=1024,
        description="Largest body of an authenticated admin request (bulk product upserts).",
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)

    # -- Shoppers: behaviour events (indexer/events, api/events_routes.py) --
    # Not under index_dir: snapshots there are built, swapped and deleted; events are
    # the shop's own record and outlive every snapshot (and may live on another disk).
    events_db: Path = Field(
        Path("var/events.db"), description="SQLite file of behaviour events (WAL mode)."
    )
    user_key: SecretStr | None = Field(
        None,
        description="Secret key of the keyed hash (HMAC-SHA256) that pseudonymises shopper "
        "ids; at least 16 random bytes. Keep it stable: a new key splits every shopper's "
        "history. Required to serve or import events (outside `shopsearch demo`).",
    )
    events_retention_days: int = Field(
        400,
        ge=0,
        description="Events older than this many days are deleted by `shopsearch events "
        "prune` and the nightly job (0: kept for ever).",
    )

    # -- Shopper-aware search and recommendations (api/shoppers.py, api/recommend_routes.py) --
    personal_history: int = Field(
        50, ge=1, le=1000, description="Newest events of a shopper that re-score a search."
    )
    personal_depth: int = Field(
        50, ge=1, le=1000, description="Head of the ranked list that a shopper's history re-scores."
    )
    personal_model: str = Field(
        "personal/latest",
        description="Shopper-aware re-scoring model spec (<kind>/<version>, <kind>/latest or "
        "a directory), trained by `shopsearch train recommender`; without one, built-in "
        "blend weights.",
    )
    models_dir: Path = Field(
        Path("var/models"), description="Model registry (towers, reranker, recommender)."
    )
    recommender: str = Field(
        "recommender/latest",
        description="Recommender model spec (<kind>/<version>, <kind>/latest or a directory); "
        "without one, recommendations fall back to popularity and text neighbours.",
    )

    # -- Suggestions as you type (retrieval/suggest.py, api/suggestions.py) --
    suggest_min_searchers: int = Field(
        3,
        ge=1,
        le=1000,
        description="Distinct searchers (user or session; each anonymous search counts "
        "as one) a past query needs before it is suggested to anyone.",
    )
    suggest_max_queries: int = Field(
        10_000,
        ge=0,
        le=1_000_000,
        description="Past queries counted at most (the least searched are forgotten "
        "first); 0: past queries are neither counted nor suggested.",
    )
    suggest_max_phrases: int = Field(
        300_000,
        ge=1_000,
        le=5_000_000,
        description="Catalog phrases a snapshot's suggestion index keeps at most (the "
        "most used); bounds its memory (about 100 bytes a phrase).",
    )
    suggest_queries_file: Path | None = Field(
        None,
        description="JSON file the suggestable past queries (text and count only) are "
        "saved to every suggest_refresh_s and at shutdown, and read at start-up; unset: "
        "in memory only.",
    )
    suggest_refresh_s: float = Field(
        10.0,
        ge=0.05,
        le=3600,
        description="How often newly counted past queries are verified on the serving "
        "snapshot (and saved): the delay before a popular query is suggested.",
    )

    # -- Elasticsearch (the lexical leg of snapshots built with --lexical elasticsearch) --
    # Which backend a snapshot uses is recorded in its manifest; these settings say how
    # to reach the cluster. Secrets are SecretStr: never logged, printed or written to a
    # manifest.
    lexical: LexicalBackend = Field(
        "tantivy", description="Lexical backend of new builds (serving follows the manifest)."
    )
    vector: VectorBackend = Field(
        "faiss",
        description="Vector backend of new builds: faiss (in the snapshot) or elasticsearch "
        "(kNN in <prefix>-vectors-<version>); serving follows the manifest.",
    )
    es_vector_index_type: EsVectorIndexType = Field(
        "int8_hnsw", description="dense_vector index_options.type of an Elasticsearch vector leg."
    )
    es_num_candidates: int = Field(
        400,
        ge=1,
        le=10_000,
        description="kNN candidates per shard of an Elasticsearch vector leg (recall vs latency).",
    )
    es_url: str | None = Field(
        None,
        description="Elasticsearch URL, e.g. http://127.0.0.1:9200, or several nodes of one "
        "cluster separated by commas (a request a dead node refuses goes to the next); put "
        "credentials in es_api_key or es_username/es_password, not in the URL.",
    )
    es_shards: int = Field(
        1, ge=1, le=1024, description="Primary shards of the indices new builds create."
    )
    es_replicas: int = Field(
        0,
        ge=0,
        le=16,
        description="Replicas per shard of the indices new builds create: 0 for one node, "
        "1 or more on a cluster, so that losing a node loses no shard.",
    )
    es_wait_for_active_shards: int | Literal["all"] = Field(
        1,
        description="Shard copies that must be active before a write starts (1 to "
        "es_replicas + 1, or all). 1 keeps updates going while a node is down; a write is "
        "acknowledged only once every in-sync copy holds it either way.",
    )
    es_index_prefix: str = Field(
        "shopsearch",
        description="Index names <prefix>-<version>; the alias <prefix> names the serving one. "
        "Use one prefix per index directory.",
    )
    es_api_key: SecretStr | None = Field(None, description="API key (base64 'id:key' form).")
    es_username: str | None = Field(None, description="Basic-auth user name.")
    es_password: SecretStr | None = Field(None, description="Basic-auth password.")
    es_ca_certs: Path | None = Field(None, description="CA certificate bundle for https.")
    es_timeout: float = Field(
        0.5, gt=0, description="Seconds a lexical query may take before it degrades to dense."
    )
    es_breaker_failures: int = Field(
        5,
        ge=0,
        description="Consecutive failed lexical queries (refused, timed out, 5xx) that open the "
        "circuit breaker: queries then fail fast to the dense leg without calling the cluster "
        "(0: no breaker).",
    )
    es_breaker_reset_s: float = Field(
        5.0,
        gt=0,
        description="Seconds the open breaker waits before one query probes the cluster; a "
        "success closes it, a failure waits again.",
    )
    es_admin_timeout: float = Field(
        120.0, gt=0, description="Seconds for builds, alias moves and other admin calls."
    )
    es_refresh: Literal["wait_for", "true", "false"] = Field(
        "wait_for",
        description="Refresh policy of incremental updates: wait_for (visible on return), "
        "true (force a refresh), false (visible within the refresh interval).",
    )

    @field_validator("fusion", mode="before")
    @classmethod
    def _fusion_choice(cls, value: object) -> object:
        # One error naming every choice, instead of one per member of the union.
        if value != "auto" and value not in FUSION_NAMES:
            raise ValueError(
                f"fusion must be one of auto, {', '.join(FUSION_NAMES)}; got {value!r}"
            )
        return value

    @field_validator("es_url")
    @classmethod
    def _es_urls(cls, value: str | None) -> str | None:
        # Several nodes are comma-separated: a typo in any of them fails here, by name.
        if value is None:
            return None
        from shopsearch.retrieval.es_connection import split_urls
        from shopsearch.retrieval.lexical_index import LexicalIndexError

        try:
            return ",".join(split_urls(value))
        except LexicalIndexError as exc:  # pydantic reports ValueErrors by field
            raise ValueError(str(exc)) from exc

    @model_validator(mode="after")
    def _write_copies_exist(self) -> Settings:
        wanted = self.es_wait_for_active_shards
        if wanted != "all" and not 1 <= wanted <= self.es_replicas + 1:
            raise ValueError(
                f"es_wait_for_active_shards={wanted} must be 'all' or from 1 to "
                f"es_replicas + 1 = {self.es_replicas + 1} (there are no more copies to wait for)"
            )
        return self

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> Settings:
        if (self.es_username is None) != (self.es_password is None):
            raise ValueError(
                "Elasticsearch basic auth needs both es_username and es_password "
                "(--es-username/--es-password or SHOPSEARCH_ES_USERNAME/_PASSWORD); one is unset"
            )
        if self.es_api_key is not None and self.es_username is not None:
            raise ValueError(
                "give either an Elasticsearch API key (es_api_key) or basic auth "
                "(es_username/es_password), not both"
            )
        return self

    @property
    def merch_rules_dir(self) -> Path:
        """Where the merchandising rules live: ``merch_dir``, else ``<index_dir>/merch``."""
        return self.merch_dir if self.merch_dir is not None else self.index_dir / "merch"

    @property
    def registry_recheck_s(self) -> float:
        """How often serving looks for a newly registered model (``recommender/latest``,
        ``personal/latest``): every ``reload_interval_s``, and every 30 s when that is 0
        (no snapshot reloading), so a first model is still found."""
        return self.reload_interval_s or 30.0

    def require_user_key(self) -> bytes:
        """The pseudonymisation key as bytes; call at start-up of anything that takes
        events, so a server without a key refuses to start instead of storing raw ids.

        Raises:
            ValueError: ``user_key`` is unset or too short, naming SHOPSEARCH_USER_KEY.
        """
        if self.user_key is None:
            raise ValueError(
                "SHOPSEARCH_USER_KEY is not set: behaviour events need a secret key to "
                "pseudonymise shopper ids; set it to at least 16 random bytes, e.g. "
                "`export SHOPSEARCH_USER_KEY=$(python -c 'import secrets; "
                "print(secrets.token_hex(32))')`, and keep it (a new key splits histories)"
            )
        key = self.user_key.get_secret_value().encode("utf-8")
        try:
            return check_key(key)
        except ValueError as exc:
            raise ValueError(f"SHOPSEARCH_USER_KEY: {exc}") from exc

    def es_refresh_policy(self) -> RefreshPolicy:
        """``es_refresh`` as the client's refresh argument."""
        return {"wait_for": "wait_for", "true": True, "false": False}[self.es_refresh]  # type: ignore[return-value]

    def elasticsearch(self) -> ElasticsearchConnection | None:
        """A new connection on ``es_url`` with the configured credentials, or None when
        ``es_url`` is unset. The caller closes it. Makes no request."""
        if not self.es_url:
            return None
        from shopsearch.retrieval.circuit_breaker import CircuitBreaker
        from shopsearch.retrieval.elasticsearch_index import ElasticsearchConnection

        basic_auth = None
        if self.es_username is not None and self.es_password is not None:
            basic_auth = (self.es_username, self.es_password.get_secret_value())
        return ElasticsearchConnection(
            self.es_url,
            api_key=self.es_api_key.get_secret_value() if self.es_api_key else None,
            basic_auth=basic_auth,
            ca_certs=self.es_ca_certs,
            timeout=self.es_timeout,
            admin_timeout=self.es_admin_timeout,
            refresh=self.es_refresh_policy(),
            shards=self.es_shards,
            replicas=self.es_replicas,
            wait_for_active_shards=self.es_wait_for_active_shards,
            breaker=CircuitBreaker(self.es_breaker_failures, self.es_breaker_reset_s)
            if self.es_breaker_failures > 0
            else None,
        )
