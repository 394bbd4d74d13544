"""Progressive checkerboard order, pyramid scales and block schedules (plain functions).

A scale of side s holds n = s*s tokens. Tokens are generated in rank order; consecutive ranks are
grouped into blocks that are drawn in parallel (one transformer pass per block).
"""
import math

import numpy as np
import torch

SCAN_ORDERS = ('checkerboard', 'raster', 'random')


def _pow2_checkerboard(side):
    """Rank grid for a power-of-two side: quadrants TL, BR, TR, BL interleaved round-robin."""
    ranks = torch.zeros(1, 1, dtype=torch.long)
    while ranks.shape[0] < side:
        h = ranks.shape[0]
        grid = torch.empty(2 * h, 2 * h, dtype=torch.long)
        # quadrant q's k-th element gets rank 4k + q
        for q, (qy, qx) in enumerate(((0, 0), (1, 1), (0, 1), (1, 0))):
            grid[qy * h:(qy + 1) * h, qx * h:(qx + 1) * h] = ranks * 4 + q
        ranks = grid
    return ranks


def checkerboard_order(side):
    """LongTensor (side, side): rank of each cell in the progressive checkerboard order."""
    if side < 1:
        raise ValueError(f'checkerboard_order: side must be >= 1, got {side}')
    full = _pow2_checkerboard(1 << (side - 1).bit_length())
    crop = full[:side, :side].reshape(-1)
    return torch.argsort(torch.argsort(crop)).reshape(side, side)


def scan_ranks(side, scan_order='checkerboard', seed=0):
    """LongTensor (side, side) of ranks for a scan order: checkerboard, raster or a fixed random one."""
    if scan_order == 'checkerboard':
        return checkerboard_order(side)
    if scan_order == 'raster':
        return torch.arange(side * side).reshape(side, side)
    if scan_order == 'random':
        gen = torch.Generator().manual_seed(seed * 1000003 + side)
        return torch.randperm(side * side, generator=gen).reshape(side, side)
    raise ValueError(f"scan_order must be one of {SCAN_ORDERS}, got {scan_order!r}")


def scale_sizes(img_size, stride, ratio, min_size=1):
    """Token-grid sides of the pyramid, ascending (docs/model.md §2); sides < 1 are dropped."""
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 1 < ratio <= 1e6):
        raise ValueError(f'scale_ratio must be a finite number > 1, got {ratio!r}')
    top = img_size // stride
    if top < 1:
        raise ValueError(f'img_size {img_size} is smaller than the autoencoder stride {stride}')
    if not 1 <= min_size <= top:
        raise ValueError(f'scale_min_size must be in [1, {top}], got {min_size}')
    sizes = [top]
    while sizes[-1] > min_size:
        sizes.append(sizes[-1] / ratio)
    if sizes[-1] == 0:
        sizes = sizes[:-1]
    sizes.append(min_size)
    return sorted({int(s) for s in np.round(sizes)} - {0})


def sampling_block_sizes(n, steps_per_scale):
    """Block sizes of one scale at sampling time: b = max(1, n // steps), the last block shorter."""
    if steps_per_scale < 1:
        raise ValueError(f'steps_per_scale must be >= 1, got {steps_per_scale}')
    b = max(1, n // steps_per_scale)
    return [b] * (n // b) + ([n % b] if n % b else [])


def schedule_block_sizes(sides, schedule):
    """Block sizes of every scale under a sampling schedule: one number of steps for every scale (capped at a
    scale's positions, as published) or a list with one number per scale, coarse to fine (each at most the
    scale's positions). k steps on n positions means blocks of max(1, n // k), the last one shorter, so a k
    that does not divide n can take a step more. ValueError naming the problem."""
    per_scale = [schedule] * len(sides) if isinstance(schedule, int) else list(schedule)
    if len(per_scale) != len(sides):
        raise ValueError(f'schedule {format_schedule(schedule)} has {len(per_scale)} entries but the model has '
                         f'{len(sides)} scales {list(sides)}: give one number, or one per scale')
    for side, steps in zip(sides, per_scale):
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f'schedule {format_schedule(schedule)}: steps must be whole numbers >= 1, got {steps!r}')
        if not isinstance(schedule, int) and steps > side * side:
            raise ValueError(f'schedule {format_schedule(schedule)}: {steps} steps for the {side}x{side} scale, '
                             f'which has only {side * side} positions')
    return [sampling_block_sizes(s * s, k) for s, k in zip(sides, per_scale)]


def serial_steps(sides, schedule):
    """Total number of sequential sampling steps of a schedule (transformer passes, the class token's aside)."""
    return sum(len(blocks) for blocks in schedule_block_sizes(sides, schedule))


def parse_schedule(text):
    """'4' -> 4 (every scale), '1,4,4,6' -> [1, 4, 4, 6] (one per scale); ValueError otherwise."""
    try:
        steps = [int(part) for part in str(text).split(',')]
    except ValueError:
        raise ValueError(f"a schedule is a number of steps per scale ('4') or one per scale ('1,4,4,6'), "
                         f'got {text!r}') from None
    return steps[0] if len(steps) == 1 else steps


def format_schedule(schedule):
    return str(schedule) if isinstance(schedule, int) else ','.join(map(str, schedule))


def random_block_size(n, generator=None):
    """Training block size: x ~ U[1, floor(sqrt n)]; x or n // x with p=0.5 each (no double-counted x)."""
    mid = math.isqrt(n)
    device = generator.device if generator is not None else 'cpu'
    while True:
        x = int(torch.randint(1, mid + 1, (1,), generator=generator, device=device))
        if torch.rand(1, generator=generator, device=device).item() < 0.5:
            return x
        if x != mid or n % mid != 0:
            return n // x


def block_layout(n, block_size, fold_remainder=False):
    """Block id and carried rank of every rank of a scale.

    Returns (block_id, carried), LongTensors (n,): block_id[r] = r // block_size (the remainder joins
    the last full block if fold_remainder), carried[r] = r - block_size, or -1 where the slot carries
    the empty token (first block, folded remainder).
    """
    ranks = torch.arange(n)
    block_id = ranks // block_size
    carried = ranks - block_size
    rem = n % block_size
    if fold_remainder and rem and n > block_size:
        block_id[n - rem:] = n // block_size - 1
        carried[n - rem:] = -1
    return block_id, carried.clamp_min(-1)


def sampling_step_map(side, steps_per_scale, scan_order='checkerboard'):
    """(side, side) float array: the sampling step within its scale at which each position is drawn."""
    sizes = sampling_block_sizes(side * side, steps_per_scale)
    step_of_rank = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    return step_of_rank[scan_ranks(side, scan_order)].numpy().astype(float)
