"""An advisory lock on a file (fcntl.flock) that separate processes take turns on: the kernel releases it
when its holder exits or is killed, so a stopped job never leaves a stale lock behind."""
import contextlib
import fcntl
import os


@contextlib.contextmanager
def file_lock(path, wait=True):
    """Hold the exclusive lock on path (the file is created if missing) for the with-block and yield True;
    with wait=False, yield False at once, holding nothing, when another holder has it."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
