"""Evaluation of generated images.

The ADM suite (the command): Inception Score, FID, sFID, precision and recall of a sample batch against a
reference batch, with the semantics of OpenAI guided-diffusion's evaluations/evaluator.py.

    python evaluator.py VIRTUAL_imagenet256_labeled.npz samples.npz --output_file results.json

Without SAMPLE_BATCH it only computes and caches the reference statistics (fetching the Inception network if
needed). Reference statistics are cached beside the reference batch as REF.<backend>.stats.npz.

(The evaluation of a generator during training and in sweeps is evaluation/generator_eval.py.)
"""
import argparse
import importlib.util
import json
import os
import zipfile

import numpy as np

from util import adm_metrics
from util.atomic import atomic_write
from util.inception_features import BACKENDS, ImageBatch, InputError, compute_activations
from util.run_dir import exit_on_error

STATS_NAMES = ('mu', 'sigma', 'mu_s', 'sigma_s')  # FID and sFID Gaussians, as stored in ADM reference batches
LABELS = {'inception_score': 'Inception Score', 'fid': 'FID', 'sfid': 'sFID', 'precision': 'Precision',
          'recall': 'Recall'}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('ref_batch', help='reference batch: .npz with arr_0 (uint8 N x H x W x 3) and optionally '
                                     'precomputed mu, sigma, mu_s, sigma_s')
    p.add_argument('sample_batch', nargs='?', help='sample batch: .npz with arr_0 (uint8 N x H x W x 3) or a folder '
                                                   'of images; omit it to only cache the reference statistics')
    p.add_argument('--output_file', help='also write the results to this file as JSON')
    p.add_argument('--backend', default='auto', choices=['auto', *BACKENDS],
                   help='Inception implementation; auto: tf if TensorFlow is installed (as published), else torch')
    p.add_argument('--inception_graph', help='classify_image_graph_def.pb for the tf backend '
                                             '(default: downloaded once to a cache folder)')
    p.add_argument('--inception_weights', help="torch-fidelity's Inception weights (.pth) for the torch backend "
                                               '(default: downloaded once by torch.hub)')
    p.add_argument('--batch_size', type=int, default=64, help='images per Inception forward pass')
    return p.parse_args(argv)


def make_extractor(args):
    """The chosen backend's name and its Inception feature extractor."""
    backend = args.backend
    if backend == 'auto':
        backend = 'tf' if importlib.util.find_spec('tensorflow') else 'torch'
    note = '' if backend == 'tf' else ' (the published numbers use --backend tf; expect small differences)'
    print(f'Inception backend: {backend}{note}')
    weights = {'tf': args.inception_graph, 'torch': args.inception_weights}.get(backend)
    return backend, BACKENDS[backend](weights)


def precomputed_stats(batch):
    """The mu, sigma, mu_s, sigma_s stored in a reference .npz (ADM reference batches have them), or None."""
    if batch.files is not None:
        return None
    with np.load(batch.path) as npz:
        present = [name for name in STATS_NAMES if name in npz.files]
        if not present:
            return None
        if len(present) < len(STATS_NAMES):
            raise InputError(f'{batch.role} {batch.path} has {", ".join(present)} but not all of '
                             f'{", ".join(STATS_NAMES)}; store all four precomputed statistics or none')
        stats = {name: npz[name] for name in STATS_NAMES}
    for mu, sigma in (('mu', 'sigma'), ('mu_s', 'sigma_s')):
        dims = stats[mu].shape
        if len(dims) != 1 or stats[sigma].shape != dims * 2:
            raise InputError(f'{batch.role} {batch.path}: {mu} has shape {dims} and {sigma} {stats[sigma].shape}; '
                             f'expected (D,) and (D, D)')
    return stats


def reference_stats(batch, precomputed, extractor, backend, batch_size):
    """Reference pool activations (for precision / recall) and FID / sFID statistics, cached beside the batch.

    Precomputed statistics in the reference file take precedence over the ones of its images, as in ADM.
    """
    path = f'{os.path.splitext(batch.path.rstrip(os.sep))[0]}.{backend}.stats.npz'
    stat = os.stat(batch.path)
    source = np.array([stat.st_size, stat.st_mtime_ns])  # the cache is valid for this very file
    try:
        with np.load(path) as cache:
            if np.array_equal(cache['source'], source):
                print(f'reading reference statistics from {path}')
                return {name: cache[name] for name in ('pool', *STATS_NAMES)}
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # no usable cache: compute it
    print('computing reference batch activations...')
    acts = compute_activations(batch, extractor, batch_size)
    stats = precomputed or dict(zip(STATS_NAMES, (*adm_metrics.gaussian_stats(acts['pool']),
                                                  *adm_metrics.gaussian_stats(acts['spatial']))))
    if (len(stats['mu']), len(stats['mu_s'])) != (acts['pool'].shape[1], acts['spatial'].shape[1]):
        raise InputError(f'{batch.role} {batch.path}: precomputed mu / mu_s have {len(stats["mu"])} / '
                         f'{len(stats["mu_s"])} dims but the {backend} backend gives {acts["pool"].shape[1]} / '
                         f'{acts["spatial"].shape[1]}; use an ADM reference batch or drop its statistics')
    ref = {'pool': acts['pool'], **stats}
    save_atomic(path, source=source, **ref)
    return ref


def save_atomic(path, **arrays):
    """np.savez through util.atomic.atomic_write; a failure (say, a read-only folder) only prints a note."""
    try:
        with atomic_write(path) as f:
            np.savez(f, **arrays)
    except OSError as e:
        print(f'note: could not cache the reference statistics at {path} ({e})')


def frechet_to_reference(name, acts, mu, sigma):
    """Frechet distance of the activations' Gaussian to (mu, sigma); a failed square root is an InputError."""
    try:
        return adm_metrics.frechet_distance(*adm_metrics.gaussian_stats(acts), mu, sigma)
    except ValueError as e:
        raise InputError(f'{name}: {e}, from {len(acts)} samples of {acts.shape[1]}-d features (a covariance '
                         f'needs more samples than dimensions to be non-singular)') from None


def evaluate(ref, sample):
    """ADM's five numbers for the sample activations against the reference statistics and activations."""
    precision, recall = adm_metrics.precision_recall(ref['pool'], sample['pool'])
    return {'inception_score': adm_metrics.inception_score(sample['logits']),
            'fid': frechet_to_reference('FID', sample['pool'], ref['mu'], ref['sigma']),
            'sfid': frechet_to_reference('sFID', sample['spatial'], ref['mu_s'], ref['sigma_s']),
            'precision': precision, 'recall': recall}


def run(args):
    ref_batch = ImageBatch(args.ref_batch, 'reference batch')
    precomputed = precomputed_stats(ref_batch)
    batches = [ref_batch]
    if args.sample_batch is not None:
        batches.append(ImageBatch(args.sample_batch, 'sample batch'))
    for batch in batches:
        if len(batch) < adm_metrics.MIN_IMAGES:
            raise InputError(f'{batch.role} {batch.path} has {len(batch)} images; precision / recall with '
                             f'k={adm_metrics.NUM_NEIGHBORS} needs at least {adm_metrics.MIN_IMAGES}')
    if args.output_file and not os.path.isdir(os.path.dirname(os.path.abspath(args.output_file))):
        raise InputError(f'the folder of --output_file {args.output_file} does not exist; create it first')
    backend, extractor = make_extractor(args)
    ref = reference_stats(ref_batch, precomputed, extractor, backend, args.batch_size)
    if len(batches) == 1:
        print('reference statistics are ready; give SAMPLE_BATCH to evaluate samples')
        return
    sample_batch = batches[1]
    print('computing sample batch activations...')
    sample = compute_activations(sample_batch, extractor, args.batch_size)
    print('Computing evaluations...')
    results = evaluate(ref, sample)
    for key, label in LABELS.items():
        print(f'{label}: {results[key]}')
    if args.output_file:
        info = {'backend': backend, 'ref_batch': ref_batch.path, 'sample_batch': sample_batch.path,
                'num_reference': len(ref_batch), 'num_samples': len(sample_batch)}
        with atomic_write(args.output_file, 'w') as f:
            json.dump({**results, **info}, f, indent=2)
        print(f'wrote {args.output_file}')


def main(argv=None):
    with exit_on_error():
        run(parse_args(argv))


if __name__ == '__main__':
    main()
