"""What the headless live run's tests and the dashboard's tests share: the small settings that
keep a live run fast, and polling for a condition a background training thread makes true."""
from __future__ import annotations

import time
from collections.abc import Callable

SMALL = dict(eval_batch=64, evaluate_every=0, batch_size=64)


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()
