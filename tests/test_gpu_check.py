"""tests/gpu_check.py, the one prepared GPU check, runs its steps on the CPU of a machine without a GPU (a tiny
config, one cheap number test, no compile), so that it cannot rot between GPU loans."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_on_the_cpu():
    done = subprocess.run([sys.executable, 'tests/gpu_check.py', '--device', 'cpu', '--compile', 'off',
                           '--number_tests', 'tests/test_generator.py -k bf16'],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert 'GPU check on CPU (no GPU on this machine' in done.stdout
    for step in ('numbers', 'train', 'sample npz', 'benchmark', 'serving'):
        assert f'| {step} | PASS |' in done.stdout
    assert 'app: summary: solo p50 ' in done.stdout and '; 0 of 2 requests failed' in done.stdout
    assert 'resumed run differs by 0.0e+00' in done.stdout  # on a CPU the resumed run is exact
