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


def test_scale_sizes_published_examples():
    assert scale_sizes(256, 16, 2) == [1, 2, 4, 8, 16]
    assert scale_sizes(256, 16, 4) == [1, 4, 16]
    assert scale_sizes(256, 16, 2, min_size=3) == [2, 3, 4, 8, 16]
    assert scale_sizes(128, 16, 4) == [1, 2, 8]  # the seed rule gives a 0 side here


# docs/model.md §2 worked by hand: S = img_size // stride; divide by the ratio while above the minimum, keeping the
# quotient that reaches it; append the minimum; round half to even; drop 0 and duplicates.
@pytest.mark.parametrize('img_size, stride, ratio, min_size, expected', [
    (128, 16, 2, 1, [1, 2, 4, 8]),  # 8 4 2 1 (fixture tiny-2x)
    (256, 16, 1.5, 1, [1, 2, 3, 5, 7, 11, 16]),  # 16 10.67 7.11 4.74 3.16 2.11 1.40 0.94, + 1
    (256, 16, 3, 1, [1, 2, 5, 16]),  # 16 5.33 1.78 0.59, + 1
    (256, 16, 8, 1, [1, 2, 16]),  # 16 2 0.25 -> 0 dropped, + 1
    (512, 16, 3, 2, [1, 2, 4, 11, 32]),  # 32 10.67 3.56 1.19, + 2: a side below the minimum
    (64, 8, 8, 3, [1, 3, 8]),  # 8 1, + 3
    (64, 4, 2, 2, [2, 4, 8, 16]),  # 16 8 4 2, + 2
    (96, 8, 2, 1, [1, 2, 3, 6, 12]),  # 12 6 3 1.5 -> 2 (half to even) 0.75 -> 1, + 1
    (160, 16, 4, 1, [1, 2, 10]),  # 10 2.5 -> 2 (half to even) 0.625 -> 1, + 1
    (144, 16, 2, 1, [1, 2, 4, 9]),  # 9 4.5 -> 4 2.25 1.125 0.5625 -> 1, + 1
    (32, 8, 3, 1, [1, 4]),  # 4 1.33 0.44 -> 0 dropped, + 1
    (64, 16, 2, 4, [4]),  # the minimum is the top side: no division
])
def test_scale_sizes_match_hand_worked_examples(img_size, stride, ratio, min_size, expected):
    assert scale_sizes(img_size, stride, ratio, min_size) == expected


@pytest.mark.parametrize('img_size, stride, min_size, message', [
    (32, 16, 3, r'scale_min_size must be in \[1, 2\], got 3'),
    (256, 16, 0, r'scale_min_size must be in \[1, 16\], got 0'),
    (8, 16, 1, 'img_size 8 is smaller than the autoencoder stride 16'),
])
def test_scale_sizes_rejects_bad_sizes(img_size, stride, min_size, message):
    with pytest.raises(ValueError, match=message):
        scale_sizes(img_size, stride, 2, min_size)


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
