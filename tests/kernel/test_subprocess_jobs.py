"""kernel.subprocess_jobs: a job generator run in a spawned process streams its events, result, errors and
honours cancel, as the Train widget relies on (issue 13 item 6: training in a thread froze the viewer)."""
import os
import time

import pytest

from napari_segtool.kernel.errors import ConfigError
from napari_segtool.kernel.events import CancelToken, Cancelled, run_job
from napari_segtool.kernel.subprocess_jobs import ChildJobError, iter_in_process


# --- jobs the child imports by name ---------------------------------------------------------------
def counting(n, cancel=None):
    for i in range(n):
        yield (i, os.getpid())
    return f"counted {n}"


def niceness(cancel=None):
    return os.nice(0)
    yield


def until_cancelled(cancel=None):
    i = 0
    while not cancel.cancelled:
        yield i
        i += 1
        time.sleep(0.01)
    return f"stopped after {i}"


def bad_setting(cancel=None):
    yield "started"
    raise ConfigError("epochs must be >= 1")


class _Unpicklable(Exception):
    def __init__(self, what, handle):
        super().__init__(what)
        self.handle = handle


def unpicklable_error(cancel=None):
    yield "started"
    raise _Unpicklable("cannot be sent back", lambda: None)


def dies(cancel=None):
    yield "started"
    os._exit(3)


def ignores_cancel(cancel=None):
    yield "started"
    time.sleep(60)
    return "too late"


# --- tests ----------------------------------------------------------------------------------------
def test_events_and_result_come_from_another_process():
    events = []
    result = run_job(iter_in_process(counting, 5, name="count"), events.append)
    assert result == "counted 5"
    assert [i for i, _ in events] == [0, 1, 2, 3, 4]
    assert {pid for _, pid in events} != {os.getpid()} and len({pid for _, pid in events}) == 1


def test_the_child_runs_at_a_lower_priority():
    assert run_job(iter_in_process(niceness, nice=7)) == min(os.nice(0) + 7, 19)


def test_user_error_keeps_its_type_and_message():
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        run_job(iter_in_process(bad_setting))


def test_unpicklable_error_becomes_a_child_job_error_naming_it():
    with pytest.raises(ChildJobError, match="_Unpicklable: cannot be sent back"):
        run_job(iter_in_process(unpicklable_error))


def test_a_child_that_dies_is_an_error_with_its_exit_code():
    with pytest.raises(ChildJobError, match=r"the training process ended unexpectedly \(exit code 3\)"):
        run_job(iter_in_process(dies, name="training"))


def test_cancel_reaches_the_child_which_returns_what_it_has():
    cancel = CancelToken()
    seen = []

    def on_event(i):
        seen.append(i)
        if len(seen) == 3:
            cancel.cancel()

    result = run_job(iter_in_process(until_cancelled, cancel=cancel), on_event)
    assert result.startswith("stopped after ") and int(result.split()[-1]) >= 3


def test_a_child_that_ignores_cancel_is_terminated():
    cancel = CancelToken()
    job = iter_in_process(ignores_cancel, cancel=cancel, stop_grace=0.5)
    assert next(job) == "started"
    cancel.cancel()
    t0 = time.monotonic()
    with pytest.raises(Cancelled, match="did not stop"):
        next(job)
    assert time.monotonic() - t0 < 10


def test_closing_the_generator_stops_the_child():
    import multiprocessing

    job = iter_in_process(ignores_cancel)
    assert next(job) == "started"
    children = multiprocessing.active_children()
    assert children
    job.close()
    assert not any(p.is_alive() for p in children)


def test_call_in_process_returns_a_plain_function_value():
    from napari_segtool.kernel.subprocess_jobs import call_in_process

    assert run_job(call_in_process(os.getpid)) != os.getpid()
    assert run_job(call_in_process(divmod, 17, 5)) == (3, 2)
