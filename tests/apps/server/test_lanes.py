"""`apps/samri/lib/server/lanes.py`: clicks first-come first-served; heavy work yields to them."""

from __future__ import annotations

import threading
import time

from apps.samri.lib.server.lanes import FifoLock, RequestLanes


def test_fifo_lock_grants_in_arrival_order() -> None:
    lock, order = FifoLock(), []

    def take(n: int) -> None:
        with lock.hold():
            order.append(n)

    threads = []
    with lock.hold():
        for n in range(5):
            threads.append(threading.Thread(target=take, args=(n,)))
            threads[-1].start()
            while lock.waiting < n + 1:  # each is queued before the next one starts
                time.sleep(0.001)
    for thread in threads:
        thread.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_heavy_work_waits_while_a_click_runs() -> None:
    lanes = RequestLanes()
    click_running, release = threading.Event(), threading.Event()

    def click() -> None:
        with lanes.interactive():
            click_running.set()
            release.wait(5)

    thread = threading.Thread(target=click)
    thread.start()
    click_running.wait(5)
    assert lanes.clicks_pending == 1
    threading.Timer(0.2, release.set).start()
    waited = lanes.yield_to_interactive(max_wait_s=5)
    thread.join(5)
    assert 0.1 < waited < 4 and lanes.clicks_pending == 0


def test_yield_is_bounded_and_free_when_idle() -> None:
    lanes = RequestLanes()
    assert lanes.yield_to_interactive() < 0.05
    with lanes.interactive():
        assert 0.09 < lanes.yield_to_interactive(max_wait_s=0.1) < 1.0  # never starves the heavy lane


def test_a_click_does_not_wait_for_the_heavy_lane() -> None:
    lanes, holding, done = RequestLanes(), threading.Event(), threading.Event()

    def heavy() -> None:
        with lanes.heavy():
            holding.set()
            done.wait(5)

    thread = threading.Thread(target=heavy)
    thread.start()
    holding.wait(5)
    start = time.monotonic()
    with lanes.interactive():
        pass
    assert time.monotonic() - start < 0.5
    done.set()
    thread.join(5)


def test_two_clicks_share_the_lane_and_a_third_waits() -> None:
    lanes, inside, release = RequestLanes(click_slots=2), [], threading.Event()

    def click(n: int) -> None:
        with lanes.interactive():
            inside.append(n)
            release.wait(5)

    threads = [threading.Thread(target=click, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while len(inside) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.1)
    assert len(inside) == 2  # two run, the third is queued
    assert lanes._interactive.waiting == 1  # noqa: SLF001
    release.set()
    for thread in threads:
        thread.join(5)
    assert sorted(inside) == [0, 1, 2]


def test_heavy_executor_is_one_lazily_started_thread() -> None:
    lanes = RequestLanes()
    assert lanes._executor is None  # noqa: SLF001 (nothing started at construction)
    names = {lanes.heavy_executor().submit(lambda: threading.current_thread().name).result(5) for _ in range(3)}
    assert len(names) == 1 and next(iter(names)).startswith("samri-heavy")
    lanes.close()


def test_request_context_clock_excludes_pauses() -> None:
    from apps.samri.lib.server.context import RequestContext, current, run_with

    context = RequestContext(pause=lambda: time.sleep(0.2))
    start = context.work_clock()
    assert context.should_stop() is False
    assert context.work_clock() - start < 0.1 and context.paused_seconds >= 0.19
    context.cancelled.set()
    assert context.should_stop() is True
    assert run_with(context, current) is context and current() is not context  # only inside the call
