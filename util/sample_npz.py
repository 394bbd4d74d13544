"""Evaluation batches: N samples with class-balanced labels and per-sample seeds, split across ranks, written
as resumable shards and merged into one ADM-layout .npz (`arr_0` uint8 N x H x W x 3, `labels`).

Sample i has label i * K // N (K classes; counts differ by at most one, and a short run still spans the
class range) and seed base_seed * SEED_STRIDE + i, and is decoded on its own, so its image does not depend
on the batch size, the number of processes or on which run of a resumed job drew it (pixels can still move by
one level between machines or thread counts: float rounding in the decoder).
"""
import glob
import json
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from util.distributed import all_gather_objects, barrier
from util.images import to_uint8

SEED_STRIDE = 1_000_003
MAX_BASE_SEED = 2 ** 32  # base * SEED_STRIDE + i stays inside torch.Generator's 64-bit seed range


def sample_seeds(base_seed, indices):
    """Seed of each sample index: base_seed * SEED_STRIDE + i."""
    return [base_seed * SEED_STRIDE + int(i) for i in indices]


def balanced_labels(num_samples, num_classes):
    """(N,) long labels i * K // N."""
    return torch.arange(num_samples) * num_classes // num_samples


@torch.no_grad()
def decode_each(model, codes):
    """Top-scale codes (B, s, s) -> (B, H, W, 3) uint8, decoding one image at a time: batched convolutions
    round differently for different batch sizes, which would move some pixels by one level."""
    return np.concatenate([to_uint8(model.autoenc.decode(model.autoenc.codes_to_latents(c[None]))) for c in codes])


def atomic_savez(path, **arrays):
    """np.savez to a hidden temporary file in the same folder, then rename over path."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f'.{name}.tmp')
    with open(tmp, 'wb') as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


class ShardStore:
    """FILE.shards/: settings.json (what the shards were drawn with) and shard_<first index>.npz files, each
    holding `indices`, `images` and (class-conditional) `labels` of one completed batch."""

    def __init__(self, output_npz, settings):
        self.output_npz = output_npz
        self.folder = output_npz + '.shards'
        self.settings = settings

    def check_settings(self):
        """Raise ValueError if the folder holds shards drawn with other settings."""
        path = os.path.join(self.folder, 'settings.json')
        if not os.path.isfile(path):
            return
        with open(path) as f:
            old = json.load(f)
        changed = [f'{k}: {old.get(k)} -> {v}' for k, v in self.settings.items() if old.get(k) != v]
        if changed:
            raise ValueError(f'{self.folder} holds shards drawn with other settings ({"; ".join(changed)}); '
                             'delete it or choose another --output_npz')

    def write_settings(self):
        os.makedirs(self.folder, exist_ok=True)
        tmp = os.path.join(self.folder, '.settings.json.tmp')
        with open(tmp, 'w') as f:
            json.dump(self.settings, f, indent=1)
        os.replace(tmp, os.path.join(self.folder, 'settings.json'))

    def shard_paths(self):
        return sorted(glob.glob(os.path.join(self.folder, 'shard_*.npz')))

    def done_indices(self):
        done = set()
        for path in self.shard_paths():
            with np.load(path) as shard:
                done.update(shard['indices'].tolist())
        return done

    def write(self, indices, images, labels=None):
        extra = {} if labels is None else {'labels': labels}
        atomic_savez(os.path.join(self.folder, f'shard_{indices[0]:08d}.npz'), indices=indices, images=images,
                     **extra)

    def merge(self, num_samples):
        """All shards in index order -> output_npz (atomic). Raises ValueError if indices are missing."""
        images, labels, seen = None, None, np.zeros(num_samples, dtype=bool)
        for path in self.shard_paths():
            with np.load(path) as shard:
                idx = shard['indices']
                if images is None:
                    images = np.empty((num_samples, *shard['images'].shape[1:]), dtype=np.uint8)
                    labels = np.empty(num_samples, dtype=np.int64) if 'labels' in shard else None
                images[idx] = shard['images']
                if labels is not None:
                    labels[idx] = shard['labels']
                seen[idx] = True
        if not seen.all():
            raise ValueError(f'{self.folder}: {int((~seen).sum())} of {num_samples} samples missing, cannot merge')
        atomic_savez(self.output_npz, arr_0=images, **({} if labels is None else {'labels': labels}))
        return images.shape


def write_sample_npz(model, dist, num_samples, output_npz, batch_size, base_seed, sample_kwargs, settings):
    """Draw the samples not yet in FILE.shards/ (rank r takes every world_size-th of them), then merge on
    rank 0. sample_kwargs go to model.sample; settings identify the run (checked when resuming)."""
    store = ShardStore(output_npz, settings)
    store.check_settings()
    if dist.is_main:
        store.write_settings()
    # rank 0's listing for every rank; the gather waits for it, so all shard writes come after the scan
    done = all_gather_objects(store.done_indices() if dist.is_main else None)[0]
    todo = [i for i in range(num_samples) if i not in done]
    mine = todo[dist.rank::dist.world_size]
    all_labels = balanced_labels(num_samples, model.num_classes) if model.class_cond else None
    if dist.is_main:
        print(f'{len(done)} of {num_samples} samples already in {store.folder}; drawing {len(todo)} '
              f'on {dist.world_size} process(es)')
    bar = tqdm(total=len(todo), unit='img', disable=not dist.is_main, dynamic_ncols=True)
    start = time.perf_counter()
    for b in range(0, len(mine), batch_size):
        indices = mine[b:b + batch_size]
        labels = None if all_labels is None else all_labels[indices]
        out = model.sample(labels=labels, batch_size=len(indices), seeds=sample_seeds(base_seed, indices),
                           decode='none', **sample_kwargs)
        store.write(np.array(indices, dtype=np.int64), decode_each(model, out.codes[-1]),
                    None if labels is None else labels.numpy())
        bar.update(min(len(indices) * dist.world_size, bar.total - bar.n))  # ranks advance alike: global estimate
    bar.close()
    barrier()  # every shard written; the other ranks are done
    if dist.is_main:
        seconds = time.perf_counter() - start
        rate = f'{len(todo) / seconds:.2f} images/s' if todo else 'nothing left to draw'
        shape = store.merge(num_samples)
        print(f'wrote {output_npz}: arr_0 {shape} uint8 ({rate}); shards kept in {store.folder} for resuming')
