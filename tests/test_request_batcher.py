"""util/request_batcher.py: waiting requests of one key are merged up to the size bound, in arrival order; a
failing merged batch is run again request by request, so only the bad request fails; a full queue is a clear
error; progress reaches every caller of a batch in the caller's own thread."""
import threading
import time

import pytest

from util.request_batcher import QueueFull, RequestBatcher


class Recorder:
    """run_batch that records the batches it runs and can be held (the worker waits) until released."""

    def __init__(self):
        self.batches, self.open = [], threading.Event()
        self.open.set()

    def __call__(self, key, items, progress):
        self.open.wait(10)
        self.batches.append((key, list(items)))
        progress(len(items))
        if any(item == 'bad' for item in items):
            raise ValueError(f'bad item in {items}')
        return [f'{key}:{item}' for item in items]


def submit_in_thread(batcher, results, key, item, size=1):
    def run():
        try:
            results[item] = batcher.submit(key, item, size)
        except Exception as e:  # noqa: BLE001 (recorded for the test)
            results[item] = e
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def wait_until(condition):
    start = time.time()
    while not condition():
        assert time.time() - start < 10, 'timed out'
        time.sleep(0.01)


def held_batcher(max_size=4, max_waiting=16):
    """A batcher whose worker is busy with a first request until recorder.open is set, so that later requests
    queue up; returns (batcher, recorder, results, threads)."""
    recorder = Recorder()
    recorder.open.clear()
    batcher = RequestBatcher(recorder, max_size=max_size, max_waiting=max_waiting)
    results = {}
    threads = [submit_in_thread(batcher, results, 'hold', 'first')]
    wait_until(lambda: not batcher.waiting)  # the worker has taken it and waits in run_batch
    return batcher, recorder, results, threads


def test_waiting_requests_of_one_key_merge_up_to_the_size_bound():
    batcher, recorder, results, threads = held_batcher(max_size=4)
    for item, key, size in [('a', 'x', 2), ('b', 'y', 1), ('c', 'x', 1), ('d', 'x', 2), ('e', 'x', 1)]:
        threads.append(submit_in_thread(batcher, results, key, item, size))
        wait_until(lambda: len(batcher.waiting) == len(threads) - 1)  # arrival order as listed
    recorder.open.set()
    for thread in threads:
        thread.join(10)
    # the oldest key first; d (size 2) does not fit beside a and c, e does; then y; then the rest of x
    assert [(key, items) for key, items in recorder.batches] == [
        ('hold', ['first']), ('x', ['a', 'c', 'e']), ('y', ['b']), ('x', ['d'])]
    assert results == {'first': 'hold:first', 'a': 'x:a', 'b': 'y:b', 'c': 'x:c', 'd': 'x:d', 'e': 'x:e'}


def test_a_request_larger_than_the_bound_runs_alone():
    batcher = RequestBatcher(Recorder(), max_size=2, max_waiting=4)
    assert batcher.submit('k', 'big', size=5) == 'k:big'


def test_a_bad_request_in_a_merged_batch_fails_alone():
    batcher, recorder, results, threads = held_batcher()
    for item in ('good1', 'bad', 'good2'):
        threads.append(submit_in_thread(batcher, results, 'k', item))
    wait_until(lambda: len(batcher.waiting) == 3)
    recorder.open.set()
    for thread in threads:
        thread.join(10)
    assert results['good1'] == 'k:good1' and results['good2'] == 'k:good2'
    assert isinstance(results['bad'], ValueError) and str(results['bad']) == "bad item in ['bad']"
    assert [items for _, items in recorder.batches[1:]] == [['good1', 'bad', 'good2'], ['good1'], ['bad'], ['good2']]


def test_a_full_queue_is_a_clear_error():
    batcher, recorder, results, threads = held_batcher(max_waiting=2)
    threads += [submit_in_thread(batcher, results, 'k', item) for item in ('a', 'b')]
    wait_until(lambda: len(batcher.waiting) == 2)
    with pytest.raises(QueueFull, match=r'the server is busy: 2 requests are waiting for the model \(at most 2\); '
                                        'try again in a moment'):
        batcher.submit('k', 'c')
    recorder.open.set()
    for thread in threads:
        thread.join(10)
    assert results == {'first': 'hold:first', 'a': 'k:a', 'b': 'k:b'}


def test_progress_reaches_every_caller_in_its_own_thread():
    batcher, recorder, results, threads = held_batcher()
    seen = {}

    def call(item):
        batcher.submit('k', item, on_progress=lambda n: seen.setdefault(item, (n, threading.current_thread())))
    callers = [threading.Thread(target=call, args=(item,)) for item in ('a', 'b')]
    for caller in callers:
        caller.start()
    wait_until(lambda: len(batcher.waiting) == 2)
    recorder.open.set()
    for thread in threads + callers:
        thread.join(10)
    assert seen == {'a': (2, callers[0]), 'b': (2, callers[1])}


def test_without_its_own_thread_the_batches_run_in_the_thread_that_calls_work():
    ran_in = []

    def run_batch(key, items, progress):
        ran_in.append(threading.get_ident())
        return list(items)
    before = threading.active_count()
    batcher = RequestBatcher(run_batch, max_size=4, max_waiting=4, own_thread=False)
    assert threading.active_count() == before  # no worker of its own
    worker = threading.Thread(target=batcher.work, daemon=True)  # the app's main thread, here a stand-in
    worker.start()
    assert batcher.submit('k', 'a') == 'a' and ran_in == [worker.ident]
