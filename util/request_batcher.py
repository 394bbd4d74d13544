"""Concurrent requests merged into batches: callers hand in work from their own threads and wait for their own
result; one worker thread takes the oldest waiting request, merges with it every waiting request of the same key
up to a size bound, and runs them as one batch.

    batcher = RequestBatcher(run_batch, max_size=256, max_waiting=64)
    result = batcher.submit(key, item, size=16, on_progress=print)   # blocks; raises the request's own error

run_batch(key, items, progress) returns one result per item; progress(*args) reaches every caller of the batch
(on_progress, in the caller's thread). When a merged batch raises, each of its requests is run again on its own,
so a bad request gets its own error and the others their results.

With own_thread=False the owner runs batcher.work() in a thread of its choosing: the app runs it in its main
thread, where it loaded the model, because torch's OpenMP (libgomp) keeps a pool of threads for every thread that
runs parallel work, and once more pool threads exist than CPU cores all of them stop spinning between operations
(2x slower sampling on a 2-core CPU, docs/benchmarks.md).
"""
import queue
import threading
from dataclasses import dataclass, field

from util.errors import UsageError


class QueueFull(UsageError):
    """More requests are waiting than the batcher takes."""


@dataclass(eq=False)  # compared by identity
class Request:
    key: object
    item: object
    size: int
    messages: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # ('progress', args) ..., ('done', _)
    result: object = None
    error: BaseException = None


class RequestBatcher:
    """One worker thread that runs waiting requests in batches of one key and at most max_size in all (a request
    larger than max_size runs alone); at most max_waiting requests wait, beyond that submit raises QueueFull. The
    worker is a thread of its own, or with own_thread=False whichever thread calls work()."""

    def __init__(self, run_batch, max_size, max_waiting, own_thread=True):
        if max_size < 1 or max_waiting < 1:
            raise ValueError(f'max_size and max_waiting must be >= 1, got {max_size} and {max_waiting}')
        self.run_batch, self.max_size, self.max_waiting = run_batch, max_size, max_waiting
        self.waiting = []  # Requests in arrival order
        self.changed = threading.Condition()
        if own_thread:
            threading.Thread(target=self.work, name='request-batcher', daemon=True).start()

    def submit(self, key, item, size=1, on_progress=None):
        """Run item in a batch of key; blocks until it is done. Returns its result or raises its error."""
        request = Request(key, item, size)
        with self.changed:
            if len(self.waiting) >= self.max_waiting:
                raise QueueFull(f'the server is busy: {len(self.waiting)} requests are waiting for the model '
                                f'(at most {self.max_waiting}); try again in a moment')
            self.waiting.append(request)
            self.changed.notify()
        while True:
            kind, payload = request.messages.get()
            if kind == 'done':
                break
            if on_progress is not None:
                on_progress(*payload)
        if request.error is not None:
            raise request.error
        return request.result

    def next_batch(self):
        """The oldest waiting request and the later ones of its key that fit in max_size, taken off the queue."""
        with self.changed:
            while not self.waiting:
                self.changed.wait()
            first = self.waiting[0]
            batch, total = [], 0
            for request in self.waiting:
                if request.key == first.key and (not batch or total + request.size <= self.max_size):
                    batch.append(request)
                    total += request.size
            self.waiting = [r for r in self.waiting if r not in batch]
            return batch

    def work(self):
        """Run batches as requests come, forever: the worker's loop."""
        while True:
            self._run(self.next_batch())

    def _run(self, batch):
        """Run a batch and deliver its results; a merged batch that fails runs again request by request."""
        def progress(*args):
            for request in batch:
                request.messages.put(('progress', args))
        try:
            results = self.run_batch(batch[0].key, [r.item for r in batch], progress)
            if len(results) != len(batch):
                raise RuntimeError(f'run_batch returned {len(results)} results for {len(batch)} requests')
        except Exception as e:  # noqa: BLE001 (delivered to the caller, who raises it)
            if len(batch) > 1:
                for request in batch:
                    self._run([request])
                return
            batch[0].error = e
        else:
            for request, result in zip(batch, results):
                request.result = result
        for request in batch:
            request.messages.put(('done', None))
