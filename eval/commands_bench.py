"""``shopsearch bench``: in-process per-stage latency of the serving snapshot, HTTP QPS at
several concurrencies, or (``--scale``) cost by catalog size (mounted by eval/cli.py)."""

from __future__ import annotations

import json
import os
import platform
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shopsearch.api.cli_common import models_dir_setting
from shopsearch.api.settings import Settings
from shopsearch.eval.commands import DEFAULT_HOMEDEPOT, console
from shopsearch.retrieval.model_registry import resolve_model
from shopsearch.retrieval.search_params import MODE_NAMES

__all__ = ["bench_command"]


def bench_command(
    index_dir: Annotated[
        Path | None, typer.Option(help="Index dir whose CURRENT snapshot is measured.")
    ] = None,
    homedepot_dir: Annotated[
        Path, typer.Option(help="Queries come from this split's search terms.")
    ] = DEFAULT_HOMEDEPOT,
    split: Annotated[str, typer.Option(help="Home Depot split for the queries.")] = "dev",
    queries_file: Annotated[
        Path | None, typer.Option("--queries", help="TSV qid<TAB>text instead.")
    ] = None,
    n: Annotated[int, typer.Option(help="Queries measured (after --warmup).")] = 500,
    warmup: Annotated[int, typer.Option(help="Queries run first and not measured.")] = 50,
    mode: Annotated[str, typer.Option(help=f"One of {', '.join(MODE_NAMES)}.")] = "hybrid",
    rerank: Annotated[bool, typer.Option(help="Rerank (needs --reranker).")] = False,
    reranker: Annotated[Path | None, typer.Option(help="Cross-encoder dir.")] = None,
    rerank_depth: Annotated[int, typer.Option(help="Candidates the reranker scores.")] = 50,
    http: Annotated[
        bool,
        typer.Option(
            help="Also start a server on a free loopback port and load-test it over HTTP."
        ),
    ] = False,
    concurrency: Annotated[str, typer.Option(help="HTTP concurrency levels.")] = "1,4,16",
    max_requests: Annotated[int, typer.Option(help="HTTP requests per level, at most.")] = 1000,
    max_seconds: Annotated[float, typer.Option(help="Seconds per HTTP level, at most.")] = 30.0,
    retry_after: Annotated[
        bool,
        typer.Option(
            help="HTTP clients refused with 503 wait the Retry-After the server sent, as a "
            "well-behaved front-end does; --no-retry-after asks again at once (a retry storm)."
        ),
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Write the numbers as JSON here.")] = None,
    scale: Annotated[
        str | None,
        typer.Option(
            help="Scale mode: comma-separated catalog sizes (e.g. 10000,100000,1000000) scaled from "
            "the Home Depot titles; reports build time, index size, memory and latency per size."
        ),
    ] = None,
    scale_dir: Annotated[
        Path, typer.Option(help="Work dir of scale mode (catalogs, indexes, cache).")
    ] = Path("var/scale"),
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="Encoder backend: torch, onnx or onnx-int8 (must be the one that built the "
            "snapshot). Default: $SHOPSEARCH_ENCODER_BACKEND or torch.",
        ),
    ] = None,
    device: Annotated[
        str | None,
        typer.Option(
            help="'cpu', 'cuda' or 'auto' for the towers and the reranker (FAISS uses the GPU "
            "when faiss-gpu sees one). Default: $SHOPSEARCH_DEVICE or auto."
        ),
    ] = None,
) -> None:
    """Latency: in-process per-stage p50/p95/p99, and optionally HTTP QPS at several concurrencies.

    Queries are distinct (the query-embedding cache is off, so encode is measured); the
    thread count is recorded. Medians are what to compare: this machine is shared. With
    --scale, measures how build time, memory and latency grow with catalog size instead.
    """
    import torch
    from pydantic import ValidationError

    try:
        overrides = {"encoder_backend": backend, "device": device}
        base_settings = Settings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
    except ValidationError as exc:
        console.print(f"[bold red]error:[/] {exc.errors(include_url=False)[0]['msg']}")
        raise typer.Exit(2) from exc
    if scale is not None:
        _bench_scale(scale, scale_dir, homedepot_dir, split, n, out, base_settings.encoder_backend)
        return

    from shopsearch.api.schemas import SearchRequest
    from shopsearch.api.service import SearchService
    from shopsearch.eval.loadtest import free_port, run_load_test, summarize_latencies

    if queries_file is not None:
        texts = [
            line.split("\t", 1)[1].strip()
            for line in queries_file.read_text().splitlines()
            if "\t" in line
        ]
    else:
        from shopsearch.indexer.judgments import load_homedepot

        texts = [q.text for q in load_homedepot(homedepot_dir / f"{split}.csv").queries]
    texts = list(dict.fromkeys(texts))
    settings = base_settings.model_copy(
        update={
            k: v
            for k, v in {
                "index_dir": index_dir,
                "reranker_dir": resolve_model(str(reranker), models_dir_setting())
                if reranker
                else None,
            }.items()
            if v is not None
        }
        | {
            "reload_interval_s": 0.0,
            "query_cache_size": 0,
            "result_cache_size": 0,
            "rerank_cache_size": 0,
        }
    )
    service = SearchService(settings)  # with the snapshot's towers when no --model
    service.load()
    stages: dict[str, list[float]] = {}
    for i, text in enumerate(texts[: warmup + n]):
        request = SearchRequest.model_validate(
            {"q": text, "size": 10, "mode": mode, "rerank": rerank, "rerank_depth": rerank_depth}
        )
        response = service.search(request)
        if i >= warmup:
            for stage, ms in response.timings_ms.items():
                stages.setdefault(stage, []).append(ms)
    report: dict[str, object] = {
        "snapshot": service.snapshot.version,
        "products": service.snapshot.table.size,
        "mode": mode,
        "rerank": rerank,
        "encoder_backend": service.encoder.backend,
        "query_backend": service.query_encoder.backend,
        "device": service.encoder.device,
        "faiss_gpu": bool(getattr(service.snapshot.vectors, "on_gpu", False)),
        "reranker": service.reranker.info.to_dict() if service.reranker else None,
        "rerank_depth": rerank_depth if rerank else None,
        "queries": len(stages.get("total", [])),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    in_process: dict[str, dict[str, float | None]] = {}
    report["in_process_ms"] = in_process
    table = Table(
        title=f"in-process latency, {report['queries']} queries, mode {mode}, {report['threads']} threads"
    )
    for col in ("stage", "p50 ms", "p95 ms", "p99 ms", "mean ms"):
        table.add_column(col, justify="right" if col != "stage" else "left")
    for stage, samples in stages.items():
        s = summarize_latencies(samples)
        in_process[stage] = {
            "p50": s.p50_ms,
            "p95": s.p95_ms,
            "p99": s.p99_ms,
            "mean": s.mean_ms,
        }
        table.add_row(
            stage, f"{s.p50_ms:.2f}", f"{s.p95_ms:.2f}", f"{s.p99_ms:.2f}", f"{s.mean_ms:.2f}"
        )
    Console().print(table)
    if http:
        port = free_port()
        env = {
            **os.environ,
            "SHOPSEARCH_QUERY_CACHE_SIZE": "0",
            "SHOPSEARCH_RESULT_CACHE_SIZE": "0",  # the load cycles its queries
            "SHOPSEARCH_RERANK_CACHE_SIZE": "0",
            "SHOPSEARCH_ENCODER_BACKEND": settings.encoder_backend,
        }
        # `serve` refuses to start without a pseudonymisation key; this throwaway server
        # stores no events, so a fresh random one will do.
        env.setdefault("SHOPSEARCH_USER_KEY", secrets.token_hex(16))
        cmd = [
            sys.executable,
            "-m",
            "shopsearch.api.cli",
            "serve",
            "--index-dir",
            str(settings.index_dir),
            "--port",
            str(port),
        ]
        server = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            import httpx

            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180

            def answers(path: str, ok: Callable[[httpx.Response], bool]) -> None:
                """Poll ``path`` until ``ok`` holds for its answer or ``deadline`` passes."""
                while time.monotonic() < deadline:
                    try:
                        if ok(httpx.get(base + path, timeout=2)):
                            return
                    except httpx.HTTPError:
                        pass
                    time.sleep(0.5)

            answers("/readyz", lambda r: r.status_code == 200)
            # Measured once the server's start-up work is done, as a replica joins a load
            # balancer after warming up: the suggestion index is built in the background
            # after /readyz, then the heap keeper's one full pass (api/heap.py, polled
            # every second) freezes what the server holds; both hold the GIL for a while.
            answers("/v1/suggest?q=a", lambda r: r.headers.get("X-Suggest-Index") == "ready")
            time.sleep(3.0)
            levels = [int(c) for c in concurrency.split(",")]
            results = run_load_test(
                base,
                texts,
                concurrency_levels=levels,
                max_requests=max_requests,
                max_seconds=max_seconds,
                honour_retry_after=retry_after,
            )
        finally:
            server.terminate()
            server.wait(timeout=30)
        http_table = Table(title="HTTP load test (loopback, GET /v1/search, size 10)")
        for col in (
            "concurrency",
            "requests",
            "errors",
            "refused (503)",
            "QPS",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "refusal p50/p99 ms",
            "/healthz p50/p99 ms",
        ):
            http_table.add_column(col, justify="right")
        report["http"] = []
        report["http_honour_retry_after"] = retry_after
        for r in results:
            lat = r.latency
            report["http"].append(  # type: ignore[attr-defined]
                {
                    "concurrency": r.concurrency,
                    "requests": r.n_requests,
                    "errors": r.n_errors,
                    "refused": r.n_rejected,
                    "qps": r.qps,
                    "p50": lat.p50_ms,
                    "p95": lat.p95_ms,
                    "p99": lat.p99_ms,
                    "refused_p50_prober": r.probe_refused_latency.p50_ms,
                    "refused_p99_prober": r.probe_refused_latency.p99_ms,
                    "refused_p99_load_client": r.rejected_latency.p99_ms,
                    "healthz_p50": r.health_latency.p50_ms,
                    "healthz_p99": r.health_latency.p99_ms,
                }
            )
            http_table.add_row(
                str(r.concurrency),
                str(r.n_requests),
                str(r.n_errors),
                str(r.n_rejected),
                f"{r.qps:.1f}",
                f"{lat.p50_ms or 0:.2f}",
                f"{lat.p95_ms or 0:.2f}",
                f"{lat.p99_ms or 0:.2f}",
                f"{r.probe_refused_latency.p50_ms or 0:.1f}/{r.probe_refused_latency.p99_ms or 0:.1f}",
                f"{r.health_latency.p50_ms or 0:.1f}/{r.health_latency.p99_ms or 0:.1f}",
            )
        Console().print(http_table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        console.print(f"wrote {out}")


def _bench_scale(
    sizes_text: str,
    work_dir: Path,
    homedepot_dir: Path,
    split: str,
    n: int,
    out: Path | None,
    backend: str = "torch",
) -> None:
    import pandas as pd

    from shopsearch.eval.scale_bench import run_scale_bench
    from shopsearch.indexer.judgments import load_homedepot
    from shopsearch.retrieval.encoders import Encoder

    sizes = [int(s) for s in sizes_text.split(",") if s.strip()]
    base = pd.read_csv(homedepot_dir / "products.csv", dtype=str).to_dict("records")
    queries = list(
        dict.fromkeys(q.text for q in load_homedepot(homedepot_dir / f"{split}.csv").queries)
    )[:n]
    work_dir.mkdir(parents=True, exist_ok=True)
    encoder = Encoder(backend=backend)
    from shopsearch.api.cli_common import Bars

    bars = Bars()
    with bars.progress:
        points = run_scale_bench(
            base, sizes, work_dir, encoder, queries, id_field="product_uid", title_field="product_title",
            progress=bars,
        )  # fmt: skip
    table = Table(title=f"cost by catalog size ({len(queries)} queries, p50 total ms in-process)")
    for col in (
        "products",
        "build s",
        "encoded",
        "index",
        "approx R@100",
        "disk MiB",
        "serving RSS MiB (+index)",
        "hybrid",
        "dense",
        "lexical",
    ):
        table.add_column(col, justify="right")
    for p in points:
        table.add_row(
            f"{p.products:,}", f"{p.build_s}", f"{p.encoded:,}", p.index_factory, f"{p.approx_recall_at_100:.3f}",
            f"{p.disk_mib}", f"{p.serving_rss_mib} (+{p.rss_growth_mib})", f"{p.p50_ms['hybrid']}", f"{p.p50_ms['dense']}", f"{p.p50_ms['lexical']}",
        )  # fmt: skip
    Console().print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps([p.to_dict() for p in points], indent=2))
