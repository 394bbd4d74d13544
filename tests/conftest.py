"""Shared test helpers: paths of the read-only seed-compatibility fixtures."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.environ.get('CHECKERBOARD_SHARED', os.path.join(os.path.dirname(ROOT), 'shared'))
FIXTURES = os.path.join(SHARED, 'fixtures', 'seed_compat')


@pytest.fixture(scope='session')
def fixtures_dir():
    if not os.path.isdir(FIXTURES):
        pytest.fail(f'seed-compatibility fixtures not found at {FIXTURES} (set CHECKERBOARD_SHARED)')
    return FIXTURES


@pytest.fixture
def one_thread():
    """One torch thread: tiny models run fastest so, and decoded pixels can move by one level with the
    thread count (torchrun ranks run one thread each)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
