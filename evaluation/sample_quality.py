"""The quality of a generator's samples, as measured during training (main.py) and in sweeps (main_sweep.py):
class-balanced seeded samples split over ranks, a grid, FID and IS from torch-fidelity against
data_root/eval_reference, and the offline class probe's class consistency and Frechet distance."""
import json
import os
import warnings

import numpy as np
import torch

from data.image_folder import load_real_images, scan_image_folder
from models.class_probe import class_consistency, feature_frechet, fit_probe, load_probe, probe_outputs, save_probe
from models.sample_batches import draw_samples
from util import adm_metrics
from util.distributed import DistInfo, all_gather_objects
from util.images import from_uint8, save_grid, save_png

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


def real_halves(val_feats, n, seed):
    """Two disjoint seeded subsets (A, B) of the val features, each of min(n, N // 2) rows."""
    m = min(n, len(val_feats) // 2)
    order = torch.randperm(len(val_feats), generator=torch.Generator().manual_seed(seed)).numpy()
    return val_feats[order[:m]], val_feats[order[m:2 * m]]


def probe_report(probe, samples, labels, real_root, device, max_images=None, seed=0):
    """The probe's view of samples (uint8 (N, H, W, 3) or float (N, 3, H, W) in [-1, 1]) with requested labels,
    each figure beside its ceiling, the same figure for real images against real images:
    - class_consistency: share assigned to the requested class; ceiling real_class_consistency, the probe's
      accuracy on the held-out real images (real_root/val, a seeded subset of at most max_images);
    - frechet, precision, recall: Frechet distance and ADM's k-NN precision / recall (util.adm_metrics) in the
      probe's feature space, between a seeded subset of the samples and set A of the val images; ceilings
      frechet_real, precision_real, recall_real: val set B against set A. A and B are disjoint and of
      the same size, min(N, val images / 2), so every distance compares equal numbers of images (Frechet
      distances are biased by set size)."""
    if len(samples) != len(labels) or len(samples) < 2:
        raise ValueError(f'probe_report: need >= 2 samples and one label each, got {len(samples)} and {len(labels)}')
    val_images, val_labels, classes = load_real_images(real_root, 'val', probe.image_size, max_images, seed)
    if classes != probe.classes:
        raise ValueError(f'probe_report: probe trained for classes {probe.classes}, {real_root} has {classes}')
    logits, feats = probe_outputs(probe, samples, device)
    val_logits, val_feats = probe_outputs(probe, val_images, device)
    real_a, real_b = real_halves(val_feats, len(samples), seed)
    subset = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed + 1))[:len(real_a)].numpy()
    precision, recall = adm_metrics.precision_recall(real_a, feats[subset])
    precision_real, recall_real = adm_metrics.precision_recall(real_a, real_b)
    return {'class_consistency': class_consistency(logits, labels),
            'real_class_consistency': class_consistency(val_logits, val_labels),
            'frechet': feature_frechet(feats[subset], real_a), 'frechet_real': feature_frechet(real_b, real_a),
            'precision': precision, 'recall': recall, 'precision_real': precision_real, 'recall_real': recall_real,
            'num_samples': len(samples), 'num_real': len(real_a)}


def evaluate_generator(model, settings, dist: DistInfo, data_root, folder, *, num_samples, batch_size, seed,
                       probe_path, probe_epochs=20, probe_max_images=None, probe_image_size=64,
                       inception_weights=None, log=print):
    """Draw num_samples class-balanced seeded samples over the ranks; on rank 0 write them and a grid to folder
    and return the metrics (FID/IS where a reference and weights exist, the class probe's for a
    class-conditional model); None on the other ranks. settings: the SampleSettings of the samples."""
    mine = list(range(dist.rank, num_samples, dist.world_size))
    drawn = [(indices, images, labels)
             for indices, labels, images in draw_samples(model, settings, mine, num_samples, seed, batch_size)]
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
        record.update({k: v for k, v in report.items() if k not in ('num_samples', 'num_real')})
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
