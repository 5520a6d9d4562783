"""Background precompute gating (`lib.runtime.precompute`)."""

from __future__ import annotations


def test_activity_gates_background_work() -> None:
    import threading
    import time

    from apps.samri.lib.runtime.precompute import Activity

    activity, stop, done = Activity(), threading.Event(), threading.Event()
    with activity.active():
        worker = threading.Thread(target=lambda: (activity.wait_idle(0.05, stop), done.set()))
        worker.start()
        time.sleep(0.2)
        assert not done.is_set(), "waits while a request runs"
    worker.join(5)
    assert done.is_set() and activity.running == 0
