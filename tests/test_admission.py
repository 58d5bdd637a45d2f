"""Admission control on real worker threads: the bound, the line, fast refusals, and the
slot of a search that gave up is never lost."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from shopsearch.api.admission import AdmissionController, Overloaded
from shopsearch.retrieval.deadline import Deadline


def test_runs_at_most_max_inflight_and_refuses_past_the_line() -> None:
    async def scenario() -> None:
        ctl = AdmissionController(max_inflight=2, max_queue=1)
        release = threading.Event()
        peak = 0
        running = 0
        lock = threading.Lock()

        def work() -> str:
            nonlocal peak, running
            with lock:
                running += 1
                peak = max(peak, running)
            release.wait(5)
            with lock:
                running -= 1
            return "done"

        long = Deadline.after_ms(10_000)
        tasks = [asyncio.ensure_future(ctl.run(work, long)) for _ in range(3)]
        await asyncio.sleep(0.1)  # two run, one waits
        assert ctl.stats().running == 2 and ctl.stats().waiting == 1
        t = time.perf_counter()
        with pytest.raises(Overloaded) as refused:
            await ctl.run(work, long)
        assert refused.value.reason == "queue_full"
        assert time.perf_counter() - t < 1.0  # refused at once, not after the 10 s deadline
        release.set()
        assert await asyncio.gather(*tasks) == ["done"] * 3
        assert peak == 2
        assert ctl.stats().running == 0 and ctl.stats().waiting == 0

    asyncio.run(scenario())


def test_a_waiting_search_leaves_on_its_deadline_or_cancel_and_frees_its_place() -> None:
    async def scenario() -> None:
        ctl = AdmissionController(max_inflight=1, max_queue=2)
        release = threading.Event()
        computed: list[str] = []

        def work(name: str) -> str:
            computed.append(name)
            release.wait(5)
            return name

        busy = asyncio.ensure_future(ctl.run(lambda: work("busy"), Deadline.after_ms(10_000)))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded) as late:
            await ctl.run(lambda: work("late"), Deadline.after_ms(100))
        assert late.value.reason == "deadline"
        gone = Deadline.after_ms(10_000)
        waiting = asyncio.ensure_future(ctl.run(lambda: work("gone"), gone))
        await asyncio.sleep(0.05)
        gone.cancel("client disconnected")
        with pytest.raises(Overloaded) as cancelled:
            await waiting
        assert cancelled.value.reason == "cancelled"
        release.set()
        assert await busy == "busy"
        # Neither abandoned search computed, and the one slot is free again.
        assert computed == ["busy"]
        assert await ctl.run(lambda: "next", Deadline.after_ms(1000)) == "next"
        assert ctl.stats().running == 0 and ctl.stats().waiting == 0

    asyncio.run(scenario())


def test_deadline_reports_its_reason() -> None:
    d = Deadline.after_ms(0)
    assert d.expired() and d.remaining_ms() == 0.0
    assert d.reason == "deadline of 0 ms"
    n = Deadline.none()
    assert not n.expired()
    n.cancel("client disconnected")
    assert n.expired() and n.reason == "client disconnected"
