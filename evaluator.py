"""Evaluation of generated images.

The ADM suite (the command): Inception Score, FID, sFID, precision and recall of a sample batch against a
reference batch, with the semantics of OpenAI guided-diffusion's evaluations/evaluator.py.

    python evaluator.py VIRTUAL_imagenet256_labeled.npz samples.npz --output_file results.json

Without SAMPLE_BATCH it only computes and caches the reference statistics (fetching the Inception network if
needed). Reference statistics are cached beside the reference batch as REF.<backend>.stats.npz.

The evaluation of a generator during training (evaluate_generator): class-balanced seeded samples split over
ranks, a grid, FID and IS from torch-fidelity against data_root/eval_reference, and the offline class probe's
class consistency and Frechet distance (probe_report).
"""
import argparse
import importlib.util
import json
import os
import warnings
import zipfile

import numpy as np
import torch

from data.image_folder import load_real_images, scan_image_folder
from models.class_probe import class_consistency, feature_frechet, fit_probe, load_probe, probe_outputs, save_probe
from models.sample_batches import draw_samples
from util import adm_metrics
from util.atomic import atomic_write
from util.distributed import DistInfo, all_gather_objects
from util.images import from_uint8, save_grid, save_png
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


# ---- evaluation of a generator (inline during training) ---------------------------------------------------

EVAL_PREFIX = 'eval/'  # log.jsonl keys of evaluation metrics


def fidelity_metrics(sample_dir, reference, device, inception_weights=None):
    """FID and IS from torch-fidelity, or {} with one warning when the reference or the weights are missing."""
    if not os.path.isdir(reference):
        warnings.warn(f'inline FID skipped: no reference folder {reference}')
        return {}
    import torch_fidelity
    try:
        metrics = torch_fidelity.calculate_metrics(
            input1=sample_dir, input2=reference, fid=True, isc=True, cuda=device.type == 'cuda', verbose=False,
            feature_extractor_weights_path=inception_weights, samples_find_deep=True)
    except (OSError, RuntimeError) as e:  # offline without --inception_weights, unreadable weights
        warnings.warn(f'inline FID/IS skipped: Inception weights unavailable ({str(e).splitlines()[0][:200]}); '
                      'pass --inception_weights PATH on offline machines')
        return {}
    return {'fid': metrics['frechet_inception_distance'], 'isc': metrics['inception_score_mean']}


def train_probe(root, image_size, device, out_path, max_images=None, seed=0, log=print, **fit_settings):
    """The class probe of root: loaded from out_path when it was trained there for the same classes and
    image_size (one trained for others is a CheckpointError), else trained on root/train (scored on root/val,
    each a seeded subset of at most max_images) and saved to out_path. fit_settings (epochs, batch_size, lr)
    go to models.class_probe.fit_probe."""
    classes, _ = scan_image_folder(root, 'train')
    if os.path.exists(out_path):
        probe = load_probe(out_path, device, classes, image_size)
        log(f'class probe: loaded {out_path} (val accuracy {probe.val_accuracy:.4f}); not retraining')
        return probe
    images, labels, _ = load_real_images(root, 'train', image_size, max_images, seed, log=log)
    val_images, val_labels, _ = load_real_images(root, 'val', image_size, max_images, seed, log=log)
    probe = fit_probe(images, labels, val_images, val_labels, classes, image_size, device, seed=seed, log=log,
                      **fit_settings)
    save_probe(probe, out_path, max_images=max_images, seed=seed, **fit_settings)
    log(f'class probe: saved {out_path}')
    return probe


def probe_report(probe, samples, labels, real_root, device, max_images=None, seed=0):
    """The probe's view of samples (uint8 (N, H, W, 3) or float (N, 3, H, W) in [-1, 1]) with requested labels:
    - class_consistency: share assigned to the requested class;
    - real_class_consistency: the same for the held-out real images (real_root/val, a seeded subset of at most
      max_images), the probe's val accuracy: the ceiling;
    - frechet: Frechet distance between sample and val features;
    - frechet_real_baseline: the same for a seeded subset of real_root/train of the samples' size vs val, so
      both distances compare equal numbers of images with the same val set (Frechet distances are biased by
      set size)."""
    if len(samples) != len(labels) or len(samples) < 2:
        raise ValueError(f'probe_report: need >= 2 samples and one label each, got {len(samples)} and {len(labels)}')
    val_images, val_labels, classes = load_real_images(real_root, 'val', probe.image_size, max_images, seed)
    if classes != probe.classes:
        raise ValueError(f'probe_report: probe trained for classes {probe.classes}, {real_root} has {classes}')
    train_images, _, _ = load_real_images(real_root, 'train', probe.image_size, max_images=len(samples), seed=seed)
    logits, feats = probe_outputs(probe, samples, device)
    val_logits, val_feats = probe_outputs(probe, val_images, device)
    _, train_feats = probe_outputs(probe, train_images, device)
    return {'class_consistency': class_consistency(logits, labels),
            'real_class_consistency': class_consistency(val_logits, val_labels),
            'frechet': feature_frechet(feats, val_feats),
            'frechet_real_baseline': feature_frechet(train_feats, val_feats),
            'num_samples': len(samples)}


def evaluate_generator(model, dist: DistInfo, data_root, folder, *, num_samples, batch_size, seed, probe_path,
                       probe_epochs=20, probe_max_images=None, probe_image_size=64, inception_weights=None,
                       log=print, **sample_kwargs):
    """Draw num_samples class-balanced seeded samples over the ranks; on rank 0 write them and a grid to folder
    and return the metrics (FID/IS where a reference and weights exist, the class probe's for a
    class-conditional model); None on the other ranks. sample_kwargs go to model.sample."""
    mine = list(range(dist.rank, num_samples, dist.world_size))
    drawn = [(indices, images, labels)
             for indices, labels, images in draw_samples(model, mine, num_samples, seed, batch_size, **sample_kwargs)]
    gathered = [part for rank_parts in all_gather_objects(drawn) for part in rank_parts]
    if not dist.is_main:
        return None
    order = np.argsort(np.concatenate([indices for indices, _, _ in gathered]))
    images = np.concatenate([images for _, images, _ in gathered])[order]  # (N, H, W, 3) uint8
    os.makedirs(os.path.join(folder, 'samples'), exist_ok=True)
    for i, image in enumerate(images):
        save_png(image, os.path.join(folder, 'samples', f'{i:06d}.png'))
    save_grid(from_uint8(images[:64]), os.path.join(folder, 'grid.png'))
    record = fidelity_metrics(os.path.join(folder, 'samples'), os.path.join(data_root, 'eval_reference'),
                              model.seq_positions.device, inception_weights)
    if model.class_cond:
        labels = torch.cat([labels for _, _, labels in gathered])[order]
        probe = train_probe(data_root, min(model.img_size, probe_image_size), model.seq_positions.device,
                            probe_path, max_images=probe_max_images, seed=seed, log=log, epochs=probe_epochs)
        report = probe_report(probe, images, labels, data_root, model.seq_positions.device,
                              max_images=probe_max_images, seed=seed)
        record.update({k: v for k, v in report.items() if k != 'num_samples'})
    return record


def metrics_text(record):
    """'name value, ...' with 4 significant digits."""
    return ', '.join(f'{k} {v:.4g}' for k, v in record.items())


def latest_evaluation(log_path):
    """The last evaluation recorded in a run's log.jsonl as one line of text, or None when there is none."""
    if not os.path.isfile(log_path):
        return None
    last = None
    with open(log_path) as f:
        for line in f:
            record = json.loads(line)
            if any(key.startswith(EVAL_PREFIX) for key in record):
                last = record
    if last is None:
        return None
    metrics = {k[len(EVAL_PREFIX):]: v for k, v in last.items() if k.startswith(EVAL_PREFIX)}
    return (f"latest evaluation (epoch {last['epoch']}, step {last['step']}): {metrics_text(metrics)} "
            f"(all records: {log_path})")


def main(argv=None):
    with exit_on_error(InputError):
        run(parse_args(argv))


if __name__ == '__main__':
    main()
