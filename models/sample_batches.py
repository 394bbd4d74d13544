"""Class-balanced, per-sample-seeded samples, spread over ranks: the one way this project draws sets of
samples (evaluation batches, inline evaluation).

Sample i of N has label i * K // N (K classes; counts differ by at most one, and a short run still spans the
class range) and seed base_seed * SEED_STRIDE + i, and is decoded on its own, so its image does not depend
on the batch size, the number of processes or on which run of a resumed job drew it (pixels can still move by
one level between machines or thread counts: float rounding in the decoder).
"""
import numpy as np
import torch

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


def draw_samples(model, settings, indices, num_samples, base_seed, batch_size):
    """Yield (indices, labels (n,) or None, uint8 images (n, H, W, 3)) for the given sample indices of an
    N-sample set drawn with SampleSettings, batch_size at a time."""
    all_labels = balanced_labels(num_samples, model.num_classes) if model.class_cond else None
    for start in range(0, len(indices), batch_size):
        part = list(indices[start:start + batch_size])
        labels = None if all_labels is None else all_labels[part]
        out = model.sample(settings, labels=labels, batch_size=len(part), seeds=sample_seeds(base_seed, part),
                           decode='none')
        yield part, labels, decode_each(model, out.codes[-1])
