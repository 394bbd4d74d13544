"""Shared test helpers: paths of the read-only seed-compatibility fixtures.

The published-format model fixtures (about 47 MB of weights) live in the project's shared folder, not in this
repository; tests that need them are skipped, with one line at the end of the run, when the folder is missing
(a bare clone), and fail under CI (CI=true). The small published checkerboard orders live in tests/fixtures/."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.environ.get('CHECKERBOARD_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))
FIXTURES = os.path.join(SHARED, 'fixtures', 'seed_compat')
MISSING = (f'seed-compatibility fixtures not found at {FIXTURES}: set CHECKERBOARD_SHARED to the folder that '
           'holds fixtures/seed_compat to run the tests that need them')


@pytest.fixture(scope='session')
def fixtures_dir():
    if not os.path.isdir(FIXTURES):
        if os.environ.get('CI') == 'true':
            pytest.fail(MISSING)
        pytest.skip(MISSING)
    return FIXTURES


def pytest_terminal_summary(terminalreporter):
    """One line naming the missing fixture folder when tests were skipped for it."""
    if any(MISSING in str(report.longrepr) for report in terminalreporter.stats.get('skipped', [])):
        terminalreporter.write_line(f'skipped: {MISSING}')


@pytest.fixture
def one_thread():
    """One torch thread: tiny models run fastest so, and decoded pixels can move by one level with the
    thread count (torchrun ranks run one thread each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
