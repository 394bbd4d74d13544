"""util.atomic.atomic_write: a failed or killed write leaves the old file whole."""
import os
import signal
import subprocess
import sys

import pytest

from util.atomic import atomic_write

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_writes_and_replaces(tmp_path):
    path = tmp_path / 'sub' / 'a.txt'
    with atomic_write(path, 'w') as f:
        f.write('one')
    with atomic_write(path, 'w') as f:
        f.write('two')
    assert path.read_text() == 'two' and os.listdir(path.parent) == ['a.txt']
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask  # the usual permissions, not mkstemp's 0600


def test_an_exception_mid_write_leaves_the_old_file(tmp_path):
    path = tmp_path / 'a.bin'
    path.write_bytes(b'old')
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b'new, half')
            raise RuntimeError('disk full')
    assert path.read_bytes() == b'old' and os.listdir(tmp_path) == ['a.bin']


def test_a_killed_writer_leaves_the_old_file(tmp_path):
    path = tmp_path / 'a.bin'
    path.write_bytes(b'old')
    writer = ('import sys, time\nfrom util.atomic import atomic_write\n'
              f'with atomic_write({str(path)!r}) as f:\n'
              "    f.write(b'x' * 100000); f.flush(); print('writing', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, '-c', writer], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == 'writing'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert path.read_bytes() == b'old'
    leftovers = [p for p in os.listdir(tmp_path) if p != 'a.bin']
    assert len(leftovers) == 1 and leftovers[0].startswith('.a.bin.')  # the hidden temporary, never the target


def test_mode_must_be_a_write_mode(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'wb' or 'w'"):
        with atomic_write(tmp_path / 'a', 'a'):
            pass
