"""Inline evaluation during training: samples from the EMA weights (or the model), split across ranks with
class-balanced labels and per-sample seeds; a grid; FID and IS from torch-fidelity against
data_path/eval_reference; class consistency and a Frechet distance under the offline class probe."""
import json
import os
import warnings

import numpy as np
import torch

from util import distributed
from util.class_probe import probe_report, train_probe
from util.images import save_grid, save_png, to_uint8
from util.sample_npz import balanced_labels, sample_seeds

EVAL_PREFIX = 'eval/'  # log.jsonl keys of evaluation metrics


def generate(model, args, precision, dist):
    """This rank's share of eval_num_samples: (indices, uint8 (n, H, W, 3), labels (n,))."""
    n = args['eval_num_samples']
    indices = list(range(dist.rank, n, dist.world_size))
    labels = balanced_labels(n, model.num_classes)[indices] if model.class_cond else None
    images = []
    for start in range(0, len(indices), args['eval_batch_size']):
        part = indices[start:start + args['eval_batch_size']]
        kwargs = (dict(labels=labels[start:start + len(part)]) if model.class_cond else dict(batch_size=len(part)))
        out = model.sample(**kwargs, cfg=args['cfg'], cfg_start_step=args['cfg_start_step'],
                           steps_per_scale=args['eval_steps_per_scale'], temperature=args['eval_temperature'],
                           seeds=sample_seeds(args['seed'], part), precision=precision, decode='top')
        images.append(to_uint8(out.images[-1]))
    return indices, np.concatenate(images), labels


def fidelity_metrics(sample_dir, reference, args, device):
    """FID and IS from torch-fidelity, or {} with one warning when the reference or the weights are missing."""
    if not os.path.isdir(reference):
        warnings.warn(f'inline FID skipped: no reference folder {reference}')
        return {}
    import torch_fidelity
    try:
        metrics = torch_fidelity.calculate_metrics(
            input1=sample_dir, input2=reference, fid=True, isc=True, cuda=device.type == 'cuda', verbose=False,
            feature_extractor_weights_path=args['inception_weights'], samples_find_deep=True)
    except (OSError, RuntimeError) as e:  # offline without --inception_weights, unreadable weights
        warnings.warn(f'inline FID/IS skipped: Inception weights unavailable ({str(e).splitlines()[0][:200]}); '
                      'pass --inception_weights PATH on offline machines')
        return {}
    return {'fid': metrics['frechet_inception_distance'], 'isc': metrics['inception_score_mean']}


def evaluate(trainer):
    """Generate, then on rank 0 write the grid and the metrics to log.jsonl; training goes on afterwards."""
    args, dist = trainer.args, trainer.dist
    model = (trainer.ema.module if trainer.ema is not None else trainer.model).eval()
    indices, images, labels = generate(model, args, trainer.precision, dist)
    gathered = distributed.all_gather_objects((indices, images, labels))
    trainer.model.train()
    if not dist.is_main:
        return
    order = np.argsort(np.concatenate([g[0] for g in gathered]))
    images = np.concatenate([g[1] for g in gathered])[order]
    labels = torch.cat([g[2] for g in gathered])[order] if model.class_cond else None
    folder = os.path.join(args['output_dir'], f'eval_epoch{trainer.epoch:04d}')
    os.makedirs(os.path.join(folder, 'samples'), exist_ok=True)
    for i, image in enumerate(images):
        save_png(image, os.path.join(folder, 'samples', f'{i:06d}.png'))
    grid = torch.from_numpy(images[:64]).permute(0, 3, 1, 2).float() / 127.5 - 1
    save_grid(grid, os.path.join(folder, 'grid.png'))
    record = fidelity_metrics(os.path.join(folder, 'samples'), os.path.join(trainer.data_root, 'eval_reference'),
                              args, trainer.device)
    if model.class_cond:
        probe = train_probe(trainer.data_root, min(model.img_size, args['probe_image_size']), trainer.device,
                            os.path.join(args['output_dir'], 'class_probe.pth'), epochs=args['probe_epochs'],
                            max_images=args['probe_max_images'], seed=args['seed'], log=trainer.say)
        report = probe_report(probe, images, labels, trainer.data_root, trainer.device,
                              max_images=args['probe_max_images'], seed=args['seed'])
        record.update({k: v for k, v in report.items() if k != 'num_samples'})
    trainer.log.write(trainer.step, {EVAL_PREFIX + k: v for k, v in record.items()} | {'epoch': trainer.epoch})
    trainer.say(f'eval at epoch {trainer.epoch}: {metrics_text(record)} (grid: {folder}/grid.png)')


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
