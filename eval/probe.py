"""A light prober in its own process: what a fresh client sees while a server is loaded.

``python -m eval.probe URL [--interval-s 0.05]`` asks ``/healthz`` and one search
(``/v1/search?q=probe N``) in turn, pausing ``interval_s`` between rounds, and prints one
line per request: ``healthz <ms>`` or ``search <status> <ms>``. It stops on SIGTERM or
after ``--max-seconds``.

Why a separate process: a load generator's own worker threads contend for its GIL, so
latencies it measures for quick answers (health checks, 503 refusals) include its own
waiting. This process does nothing else, so its numbers are the server's.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

import httpx

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="server base URL (loopback), e.g. http://127.0.0.1:8000")
    parser.add_argument("--interval-s", type=float, default=0.05)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    stop = False

    def on_term(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    end = time.monotonic() + args.max_seconds
    with httpx.Client(base_url=args.url, timeout=10, trust_env=False) as client:
        n = 0
        while not stop and time.monotonic() < end:
            n += 1
            for path, label in (("/healthz", "healthz"), (f"/v1/search?q=probe+{n}", "search")):
                start = time.perf_counter()
                try:
                    status = client.get(path).status_code
                except httpx.HTTPError:
                    status = 0
                ms = (time.perf_counter() - start) * 1000.0
                line = f"healthz {ms:.3f}" if label == "healthz" else f"search {status} {ms:.3f}"
                print(line, flush=True)
            time.sleep(args.interval_s)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
