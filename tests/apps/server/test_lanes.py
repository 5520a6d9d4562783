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
