"""Progressive checkerboard order, scale lists and block schedules."""
import os

import numpy as np
import pytest
import torch

from models.checkerboard import (block_layout, checkerboard_order, random_block_size, sampling_block_sizes,
                                 scale_sizes, scan_ranks)


def test_orders_match_published():
    orders = np.load(os.path.join(os.path.dirname(__file__), 'fixtures', 'checkerboard_orders.npz'))  # shared copy
    for side in range(1, 33):
        assert np.array_equal(checkerboard_order(side).numpy(), orders[f'order_{side}']), side


def test_spec_example():
    assert checkerboard_order(4).tolist() == [[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]


@pytest.mark.parametrize('kind', ['checkerboard', 'raster', 'random'])
@pytest.mark.parametrize('side', [1, 2, 3, 5, 7, 8, 13, 16, 31])
def test_orders_are_permutations(kind, side):
    ranks = scan_ranks(side, kind).reshape(-1)
    assert torch.equal(torch.sort(ranks).values, torch.arange(side * side))


@pytest.mark.parametrize('side', [2, 4, 8, 16, 32])
def test_prefixes_balanced_over_quadtree_cells(side):
    ranks = checkerboard_order(side)
    cells_per_axis = 1
    while cells_per_axis <= side:
        cell = side // cells_per_axis
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing='ij')
        cell_id = (ys // cell) * cells_per_axis + xs // cell
        in_order = cell_id.reshape(-1)[torch.argsort(ranks.reshape(-1))]  # cell of rank 0, 1, ...
        n_cells = cells_per_axis ** 2
        for k in range(1, side * side // n_cells + 1):
            counts = torch.bincount(in_order[:k * n_cells], minlength=n_cells)
            assert torch.all(counts == k), (side, cells_per_axis, k)
        cells_per_axis *= 2


def seed_scale_sizes(img_size, stride, ratio, min_size):
    """The published rule, verbatim in behaviour, for comparison."""
    sizes = [img_size // stride]
    while sizes[-1] > min_size:
        sizes.append(sizes[-1] / ratio)
    if sizes[-1] == 0:
        sizes = sizes[:-1]
    sizes.append(min_size)
    return sorted({int(np.round(s)) for s in sizes})


def test_scale_sizes_published_examples():
    assert scale_sizes(256, 16, 2) == [1, 2, 4, 8, 16]
    assert scale_sizes(256, 16, 4) == [1, 4, 16]
    assert scale_sizes(256, 16, 2, min_size=3) == [2, 3, 4, 8, 16]
    assert scale_sizes(128, 16, 4) == [1, 2, 8]  # the seed rule gives a 0 side here


@pytest.mark.parametrize('img_size', [32, 64, 96, 128, 256, 512])
@pytest.mark.parametrize('stride', [4, 8, 16])
@pytest.mark.parametrize('ratio', [1.5, 2, 3, 4, 8])
@pytest.mark.parametrize('min_size', [1, 2, 3])
def test_scale_sizes_equal_seed_where_valid(img_size, stride, ratio, min_size):
    if min_size > img_size // stride:
        with pytest.raises(ValueError):
            scale_sizes(img_size, stride, ratio, min_size)
        return
    seed = seed_scale_sizes(img_size, stride, ratio, min_size)
    ours = scale_sizes(img_size, stride, ratio, min_size)
    assert min(ours) >= 1 and ours == sorted(set(ours))
    assert ours == [s for s in seed if s >= 1]


@pytest.mark.parametrize('ratio', [0, -2, 1, 0.5, float('nan'), float('inf'), 1e9, '2'])
def test_scale_sizes_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match='scale_ratio'):
        scale_sizes(256, 16, ratio)


@pytest.mark.parametrize('n', [1, 4, 16, 25, 64, 256])
def test_sampling_blocks_cover_every_rank_once(n):
    for steps in range(1, n + 1):
        sizes = sampling_block_sizes(n, steps)
        assert sum(sizes) == n and all(s >= 1 for s in sizes)
        b = max(1, n // steps)
        assert sizes[:-1] == [b] * (len(sizes) - 1)
    assert sampling_block_sizes(16, 3) == [5, 5, 5, 1]
    assert len(sampling_block_sizes(256, 4)) == 4


@pytest.mark.parametrize('n', [1, 4, 9, 16, 64, 100, 256])
def test_random_block_size_distribution(n):
    gen = torch.Generator().manual_seed(0)
    draws = [random_block_size(n, gen) for _ in range(400)]
    mid = int(np.sqrt(n))
    allowed = set(range(1, mid + 1)) | {n // x for x in range(1, mid + 1)}
    assert set(draws) <= allowed
    gen = torch.Generator().manual_seed(0)
    assert [random_block_size(n, gen) for _ in range(400)] == draws  # driven by the generator alone
    if n >= 16:
        assert min(draws) <= mid < max(draws)  # both x and n // x are drawn


@pytest.mark.parametrize('n,b', [(16, 4), (16, 5), (64, 7), (1, 1), (10, 3)])
@pytest.mark.parametrize('fold', [False, True])
def test_block_layout(n, b, fold):
    block_id, carried = block_layout(n, b, fold)
    assert block_id.shape == carried.shape == (n,)
    assert torch.all(block_id[1:] >= block_id[:-1])  # blocks are consecutive ranks
    for r in range(n):
        if carried[r] >= 0:
            assert carried[r] == r - b and block_id[carried[r]] < block_id[r]
    if fold and n % b and n > b:
        assert block_id[-1] == n // b - 1 and torch.all(carried[n - n % b:] == -1)
    else:
        assert torch.equal(block_id, torch.arange(n) // b)
        assert torch.equal(carried, torch.where(torch.arange(n) >= b, torch.arange(n) - b, -1))
