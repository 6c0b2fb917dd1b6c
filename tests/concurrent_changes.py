"""A test helper: change widget controls from several threads at once."""

from __future__ import annotations

import threading


def change_at_once(changes: list[tuple[object, list]]) -> list[Exception]:
    """Start one thread per ``(control, values)`` pair, released together by a barrier; each sets
    ``control.value`` to its values in turn.  Returns the exceptions raised (none, if all went well)."""
    failures: list[Exception] = []
    start = threading.Barrier(len(changes))

    def change(control, values):
        try:
            start.wait()
            for value in values:
                control.value = value
        except Exception as error:          # noqa: BLE001 -- returned to the test
            failures.append(error)

    threads = [threading.Thread(target=change, args=pair) for pair in changes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures
