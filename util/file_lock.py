"""An advisory lock on a file (fcntl.flock) that separate processes take turns on: the kernel releases it
when its holder exits or is killed, so a stopped job never leaves a stale lock behind."""
import contextlib
import fcntl
import os


@contextlib.contextmanager
def file_lock(path, wait=True, on_wait=None):
    """Hold the exclusive lock on path (the file is created if missing) for the with-block and yield True.
    When another holder has it: with wait, call on_wait() (if given) and wait for it; without, yield False at
    once, holding nothing."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
