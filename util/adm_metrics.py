"""Metric math of the ADM evaluation suite (OpenAI guided-diffusion `evaluations/evaluator.py`) on Inception
activations: FID and sFID (Frechet distance), Inception Score, k-NN manifold precision and recall.

Pure numpy/scipy; no network, no Inception network. Activations are (N, D) arrays, one row per image.
"""
import warnings

import numpy as np
from scipy import linalg, special

NUM_NEIGHBORS = 3  # k of the k-NN manifold estimate (precision / recall)
MIN_IMAGES = NUM_NEIGHBORS + 1  # a k-th neighbour other than the point itself; also >= 2 for a covariance
IS_SPLIT_SIZE = 5000  # ADM scores consecutive splits of this many images (10 splits for 50,000 samples)
SPATIAL_CHANNELS = 7  # sFID keeps the first 7 channels of mixed_6/conv: 17 * 17 * 7 = 2023 dims


def spatial_vectors(maps_NHWC):
    """sFID features: the first SPATIAL_CHANNELS channels of (N, H, W, C) maps, flattened in NHWC order."""
    maps = maps_NHWC[..., :SPATIAL_CHANNELS]  # (N, H, W, 7)
    return maps.reshape(len(maps), -1)  # (N, H*W*7)


def gaussian_stats(acts):
    """Mean (float64) and covariance (np.cov, rows are samples) of (N, D) activations."""
    return np.mean(acts, axis=0, dtype=np.float64), np.cov(acts, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Frechet distance between Gaussians, as ADM computes it (scipy sqrtm of sigma1 @ sigma2).

    A non-finite square root is retried with eps added to both diagonals (with a warning); a complex square
    root whose diagonal has an imaginary part above 1e-3 raises ValueError, otherwise its real part is used.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f'statistics of different sizes: mu {mu1.shape} vs {mu2.shape}, '
                         f'sigma {sigma1.shape} vs {sigma2.shape}')
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        warnings.warn(f'Frechet distance: singular product of covariances; adding {eps} to their diagonals')
        offset = np.eye(len(sigma1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f'Frechet distance: imaginary component {np.max(np.abs(covmean.imag))}')
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits, split_size=IS_SPLIT_SIZE):
    """Inception Score from (N, classes) logits: mean over consecutive splits of split_size images (the last
    one may be shorter) of exp(mean_i KL(p_i || mean p)), p = softmax(logits) in float64."""
    probs = special.softmax(np.asarray(logits, dtype=np.float64), axis=1)  # (N, classes)
    scores = []
    for start in range(0, len(probs), split_size):
        part = probs[start:start + split_size]
        kl = special.rel_entr(part, part.mean(axis=0, keepdims=True)).sum(axis=1)  # (n,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def _squared_distances(a, b):
    """(n, m) squared Euclidean distances between the rows of a and b (float32, clamped at 0, as ADM)."""
    d = a @ b.T  # (n, m)
    d *= -2
    d += np.einsum('ij,ij->i', a, a)[:, None]
    d += np.einsum('ij,ij->i', b, b)[None, :]
    return np.maximum(d, 0, out=d)


def manifold_radii(feats, k=NUM_NEIGHBORS, batch_size=5000):
    """Squared distance of each row to its k-th nearest row, the row itself counting as the 0-th."""
    feats = np.asarray(feats, dtype=np.float32)
    radii = np.empty(len(feats), dtype=np.float32)
    for start in range(0, len(feats), batch_size):
        d = _squared_distances(feats[start:start + batch_size], feats)  # (b, N)
        radii[start:start + batch_size] = np.partition(d, k, axis=1)[:, k]
    return radii


def precision_recall(ref_feats, sample_feats, k=NUM_NEIGHBORS, batch_size=5000):
    """ADM's ManifoldEstimator: precision = fraction of samples inside some reference k-NN ball, recall =
    fraction of references inside some sample k-NN ball (balls closed; computed in blocks of batch_size)."""
    ref_feats = np.asarray(ref_feats, dtype=np.float32)
    sample_feats = np.asarray(sample_feats, dtype=np.float32)
    ref_radii = manifold_radii(ref_feats, k, batch_size)
    sample_radii = manifold_radii(sample_feats, k, batch_size)
    sample_in_ref = np.zeros(len(sample_feats), dtype=bool)
    ref_in_sample = np.zeros(len(ref_feats), dtype=bool)
    for i in range(0, len(ref_feats), batch_size):
        for j in range(0, len(sample_feats), batch_size):
            d = _squared_distances(ref_feats[i:i + batch_size], sample_feats[j:j + batch_size])  # (b_ref, b_sample)
            sample_in_ref[j:j + batch_size] |= (d <= ref_radii[i:i + batch_size, None]).any(axis=0)
            ref_in_sample[i:i + batch_size] |= (d <= sample_radii[None, j:j + batch_size]).any(axis=1)
    return float(sample_in_ref.mean()), float(ref_in_sample.mean())
