"""Atomic file writes: write a hidden temporary file in the target's folder, fsync it, rename it over the
target and fsync the folder. A reader sees the old file or the new one, never a part, even if the writer is
killed or the machine loses power. A write that finds the disk full is a DiskFullError naming the file."""
import contextlib
import errno
import os
import tempfile


class DiskFullError(OSError):
    """No space left on the device (or no quota left) for a file; the file it was to replace is left whole."""


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _out_of_space(error):
    """The ENOSPC or EDQUOT of error, or of an exception it was raised from or while handling; else None."""
    while error is not None:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return error.errno
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def _full_disk_as_error(path, folder):
    """An exception that a full disk caused, raised again as a DiskFullError naming path and folder."""
    try:
        yield
    except BaseException as e:
        code = _out_of_space(e)
        if code is None:
            raise
        raise DiskFullError(f'could not write {path}: {os.strerror(code).lower()} in {folder} (free space or '
                            'choose another output_dir)') from e


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode='wb'):
    """Context manager yielding a file object ('wb' or 'w') whose content replaces path on a clean exit.

    On an exception the temporary file is removed and path is left as it was (a full disk: DiskFullError):
        with atomic_write('x.npz') as f: np.savez(f, a=a)
    """
    if mode not in ('wb', 'w'):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    with _full_disk_as_error(path, folder):
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
        try:
            os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
            with os.fdopen(fd, mode) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise
        _fsync_folder(folder)
