"""``shopsearch eval suggest``: latency of suggestions as you type, and proof that none
finds nothing.

Every prefix of every judged query (lengths 1 to the whole query, as a shopper types
it) is answered in-process by the same code as ``GET /v1/suggest``
(:class:`api.suggestions.Suggestions` over the snapshot's service), timed one by one.
Then every distinct suggestion is searched through the real service in lexical mode
(spelling and unit rewriting included, no dense leg to fill the page): a suggestion
with ``total == 0`` is a failure, and the command exits 1 when there is one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.console import Console

from shopsearch.api.schemas import SearchRequest
from shopsearch.api.service import SearchService
from shopsearch.api.settings import Settings
from shopsearch.api.suggestions import Suggestions
from shopsearch.retrieval.deadline import Deadline

__all__ = ["SuggestBench", "run_suggest_bench", "suggest_command"]

console = Console(stderr=True)


@dataclass
class SuggestBench:
    """What one run measured (times in milliseconds)."""

    snapshot: str
    products: int
    build_ms: float
    queries: int
    prefixes: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    answered: float  # share of prefixes with at least one suggestion
    suggestions_checked: int
    zero_result: list[str]
    check_ms: float


def prefixes_of(queries: Sequence[str]) -> list[str]:
    """Every prefix of each query as typed, lengths 1 .. len (blank ones skipped)."""
    return [q[:n] for q in queries for n in range(1, len(q) + 1) if q[:n].strip()]


def run_suggest_bench(
    service: SearchService,
    queries: Sequence[str],
    *,
    size: int = 8,
    check: bool = True,
    progress: Callable[[str], None] | None = None,
) -> SuggestBench:
    """Time suggestions for every prefix of ``queries`` on ``service``'s snapshot (the
    index is built first, and timed), then search each distinct suggestion (lexical
    mode) and list those that find nothing."""
    say = progress or (lambda _: None)
    suggestions = Suggestions(service.settings, lambda: service)
    snap = service.snapshot
    started = time.perf_counter()
    try:
        if not suggestions.wait_ready(timeout=600):
            raise RuntimeError("the suggestion index was not built within 10 minutes")
        build_ms = (time.perf_counter() - started) * 1000
        say(f"index built in {build_ms:.0f} ms")
        prefixes = prefixes_of(queries)
        times = np.empty(len(prefixes))
        answered = 0
        texts: set[str] = set()
        for i, prefix in enumerate(prefixes):
            t = time.perf_counter()
            answer = suggestions.suggest(snap, prefix, size)
            times[i] = time.perf_counter() - t
            answered += bool(answer.suggestions)
            texts.update(s.text for s in answer.suggestions)
    finally:
        suggestions.close()
    say(f"{len(prefixes)} prefixes answered, {len(texts)} distinct suggestions")
    zero: list[str] = []
    t = time.perf_counter()
    if check:
        for text in sorted(texts):
            request = SearchRequest.model_validate({"q": text, "mode": "lexical", "size": 1})
            if service.search(request, Deadline.after_ms(30_000)).total == 0:
                zero.append(text)
    ms = times * 1000
    return SuggestBench(
        snapshot=snap.version,
        products=snap.live_count,
        build_ms=round(build_ms, 1),
        queries=len(queries),
        prefixes=len(prefixes),
        p50_ms=round(float(np.percentile(ms, 50)), 3) if len(ms) else 0.0,
        p95_ms=round(float(np.percentile(ms, 95)), 3) if len(ms) else 0.0,
        p99_ms=round(float(np.percentile(ms, 99)), 3) if len(ms) else 0.0,
        max_ms=round(float(ms.max()), 3) if len(ms) else 0.0,
        answered=round(answered / max(1, len(prefixes)), 4),
        suggestions_checked=len(texts) if check else 0,
        zero_result=zero,
        check_ms=round((time.perf_counter() - t) * 1000, 1),
    )


def suggest_command(
    index_dir: Annotated[
        Path, typer.Option(help="Index dir whose CURRENT snapshot answers the suggestions.")
    ],
    homedepot_dir: Annotated[
        Path, typer.Option(help="Home Depot data: the split's queries are typed.")
    ] = Path("../shared/datasets/homedepot"),
    split: Annotated[str, typer.Option(help="Home Depot split: dev or train.")] = "dev",
    limit: Annotated[
        int | None, typer.Option(min=1, help="Only the first N distinct queries.")
    ] = None,
    size: Annotated[int, typer.Option(min=1, max=20, help="Suggestions per prefix.")] = 8,
    check: Annotated[
        bool, typer.Option(help="Search every distinct suggestion (lexical mode).")
    ] = True,
    out: Annotated[Path | None, typer.Option(help="Write the numbers as JSON here.")] = None,
) -> None:
    """Suggest latency (p50/p95/p99) over every prefix of the judged queries, and the
    suggestions that find nothing when searched (exit 1 when there is any)."""
    from shopsearch.indexer.judgments import load_homedepot
    from shopsearch.retrieval.types import ShopsearchError

    split_csv = homedepot_dir / f"{split}.csv"
    if not split_csv.is_file():
        raise typer.BadParameter(
            f"{split_csv} not found; pass --homedepot-dir", param_hint="--split"
        )
    queries = [q.text for q in load_homedepot(split_csv).queries][:limit]
    try:
        service = SearchService(Settings(index_dir=index_dir, reload_interval_s=0))
        service.load()
    except ShopsearchError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        raise typer.Exit(1) from exc
    result = run_suggest_bench(service, queries, size=size, check=check, progress=console.print)
    service.close()
    console.print(
        f"snapshot {result.snapshot} ({result.products} products): index built in "
        f"{result.build_ms:.0f} ms; {result.prefixes} prefixes of {result.queries} queries: "
        f"p50 {result.p50_ms:.3f} ms, p95 {result.p95_ms:.3f} ms, p99 {result.p99_ms:.3f} ms, "
        f"max {result.max_ms:.2f} ms; {result.answered:.1%} answered"
    )
    if check:
        console.print(
            f"{result.suggestions_checked} distinct suggestions searched (lexical) in "
            f"{result.check_ms / 1000:.1f} s: {len(result.zero_result)} found nothing"
            + (f": {result.zero_result[:10]}" if result.zero_result else "")
        )
    if out is not None:
        out.write_text(json.dumps(asdict(result), indent=2) + "\n", encoding="utf-8")
    if result.zero_result:
        raise typer.Exit(1)
