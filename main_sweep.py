"""Ablation sweeps: train variants of one config and measure each at several sampling schedules.

    python main_sweep.py --config configs/sweeps/ablations.yaml

The sweep config names a base training config (what main.py takes), the variants (dotted overrides of its
model: and args: keys), the training seeds and the evaluation. Every variant x seed trains with main.py's
trainer into OUTPUT_DIR/<variant>-seed<seed>/ (a rerun skips finished runs and resumes an interrupted one)
and is then evaluated, its figures saved as RESULTS_DIR/runs/<variant>-seed<seed>.json with its training config
(default RESULTS_DIR: OUTPUT_DIR); a run whose figures are there with the same evaluation settings is neither
trained nor measured again, so a sweep whose results folder is kept (say, committed) resumes on a machine without
its checkpoints (figures of a run trained with another config are an error, never reused):
- the exact negative log-likelihood of held-out codes (the val split, ADM center crop; models.likelihood)
  under every likelihood schedule, in bits per image and per scale;
- sample quality at every sample schedule: class consistency with its binomial standard error and the probe's
  Frechet distance (evaluation.sample_quality.probe_report), and torch-fidelity FID / IS where Inception weights are given and
  the data has an eval_reference folder.
After each run it rewrites RESULTS_DIR/results.json, results.md and two plots, nll_vs_steps.png and
quality_vs_steps.png: one curve per variant against the total number of serial steps, error bars the standard
deviation over seeds. Runs of one seed share their data order, so the tables also give each run minus the same
seed's run of its reference (the sweep's first variant with the same pyramid). Runs go seed by seed, so every
variant has one seed before any has two.
"""
import argparse
import json
import math
import os

import numpy as np
import torch
import yaml

import main as train_main
from data.image_folder import load_real_images
from evaluation import sample_quality
from models import build_generator, load_generator
from models.checkerboard import format_schedule, serial_steps
from models.generator_config import GeneratorConfig
from models.likelihood import bits, code_log_likelihood
from models.sample_batches import draw_samples
from models.sample_settings import SampleSettings
from util.atomic import atomic_write
from util.checkpoint import load_checkpoint
from util.config import ConfigError, check_keys, read_config
from util.figures import curves_figure, save_figure
from util.images import from_uint8, save_png
from util.run_dir import LAST_CHECKPOINT, exit_on_error

SWEEP_KEYS = ('base', 'output_dir', 'results_dir', 'seeds', 'variants', 'evaluation')
EVALUATION = {  # key: default
    'likelihood_schedules': [1, 2, 4, 8, 16, 64],  # a schedule: steps for every scale, or a list, one per scale
    'likelihood_images': 1000,  # held-out val images (a seeded subset)
    'sample_schedules': [1, 4],
    'num_samples': 500,
    'batch_size': 100,
    'cfg': 2.0,
    'cfg_start_step': 1,
    'temperature': 1.0,
    'seed': 0,
    'probe_epochs': 20,
    'inception_weights': None,
}


def read_sweep(path):
    """The sweep config with evaluation defaults filled in; ConfigError (one line) if it cannot work."""
    if not os.path.isfile(path):
        raise ConfigError(f'sweep config not found: {path}')
    with open(path) as f:
        sweep = yaml.safe_load(f) or {}
    check_keys(sweep, SWEEP_KEYS, 'sweep', source=path)
    for key in ('base', 'variants'):
        if not sweep.get(key):
            raise ConfigError(f'{path}: {key} is required (see main_sweep.py --help)')
    evaluation = sweep.get('evaluation') or {}
    check_keys(evaluation, EVALUATION, 'evaluation', source=path)
    sweep['evaluation'] = {**EVALUATION, **evaluation}
    sweep.setdefault('seeds', [0])
    sweep.setdefault('output_dir', os.path.join('outputs', os.path.splitext(os.path.basename(path))[0]))
    sweep.setdefault('results_dir', sweep['output_dir'])
    if not isinstance(sweep['variants'], dict) or not all(isinstance(v or {}, dict)
                                                          for v in sweep['variants'].values()):
        raise ConfigError(f'{path}: variants must map a name to its overrides ({{model.scan_order: raster}})')
    return sweep


def run_config(sweep, variant, seed):
    """The typed training config of one run (main.typed_config): the base config, the variant's overrides, the
    seed and the run folder."""
    overrides = sweep['variants'][variant] or {}
    args = {key.removeprefix('args.'): value for key, value in overrides.items() if not key.startswith('model.')}
    model = {key[len('model.'):]: value for key, value in overrides.items() if key.startswith('model.')}
    args.update(seed=seed, output_dir=os.path.join(sweep['output_dir'], f'{variant}-seed{seed}'))
    try:
        return train_main.typed_config(read_config(sweep['base'], train_main.TRAIN_OPTIONS, args, model))
    except ConfigError as e:
        raise ConfigError(f'variant {variant}: {e}') from None


def finished(config):
    """Whether the run's last checkpoint has reached args.epochs (or args.max_steps)."""
    args = config['args']
    path = os.path.join(args['output_dir'], LAST_CHECKPOINT)
    if not os.path.isfile(path):
        return False
    state = load_checkpoint(path)
    return state['epoch'] >= args['epochs'] or bool(args['max_steps']) and state['step'] >= args['max_steps']


def heldout_codes(model, data_root, settings):
    """Codes [(N, s, s)] and labels (N,) of a seeded subset of data_root/val, ADM center-cropped."""
    images, labels, _ = load_real_images(data_root, 'val', model.img_size, settings['likelihood_images'],
                                         settings['seed'], log=lambda message: None)
    x = from_uint8(images)  # (N, 3, S, S)
    parts = [model.codes_from_images(x[i:i + 256].to(model.seq_positions.device)) for i in range(0, len(x), 256)]
    return [torch.cat(scale) for scale in zip(*parts)], torch.from_numpy(labels)


def likelihood(model, codes, labels, schedule, batch_size):
    """Mean NLL in bits per image (with its standard error over the images) and per scale of the held-out
    codes under a schedule."""
    settings = SampleSettings(steps_per_scale=schedule)
    nats = torch.cat([code_log_likelihood(model, [c[i:i + batch_size] for c in codes],
                                          labels[i:i + batch_size] if model.class_cond else None, settings)
                      for i in range(0, len(labels), batch_size)])  # (N, scales)
    per_image = bits(-nats).sum(1)  # (N,)
    return {'schedule': schedule, 'serial_steps': serial_steps(model.sides, schedule),
            'bits_per_image': float(per_image.mean()), 'bits_per_image_se': float(per_image.std() / len(nats) ** 0.5),
            'bits_per_scale': bits(-nats).mean(0).tolist()}


def sweep_sample_settings(settings, schedule):
    """The SampleSettings of the sweep's samples at one schedule."""
    return SampleSettings(cfg=settings['cfg'], cfg_start_step=settings['cfg_start_step'],
                          temperature=settings['temperature'], steps_per_scale=schedule)


def measure_samples(model, schedule, settings, data_root, probe, folder):
    """Class consistency (with its standard error), probe Frechet distance and, where possible, FID / IS of
    num_samples class-balanced seeded samples drawn with a schedule."""
    n = settings['num_samples']
    parts = list(draw_samples(model, sweep_sample_settings(settings, schedule), list(range(n)), n,
                              settings['seed'], settings['batch_size']))
    images = np.concatenate([images for _, _, images in parts])  # (N, H, W, 3) uint8
    record = {'schedule': schedule, 'serial_steps': serial_steps(model.sides, schedule)}
    if model.class_cond:
        labels = torch.cat([labels for _, labels, _ in parts])
        report = sample_quality.probe_report(probe, images, labels, data_root, model.seq_positions.device,
                                        seed=settings['seed'])
        p = report['class_consistency']
        record.update(class_consistency=p, class_consistency_se=math.sqrt(p * (1 - p) / n), frechet=report['frechet'])
    if settings['inception_weights']:
        sample_dir = os.path.join(folder, f'samples_{format_schedule(schedule)}')
        os.makedirs(sample_dir, exist_ok=True)
        for i, image in enumerate(images):
            save_png(image, os.path.join(sample_dir, f'{i:06d}.png'))
        record.update(sample_quality.fidelity_metrics(sample_dir, os.path.join(data_root, 'eval_reference'),
                                                 model.seq_positions.device, settings['inception_weights']))
    return record


def training_record(config):
    """What a run was trained with (its resolved config), as stored beside its figures (JSON types)."""
    return json.loads(json.dumps(train_main.config_record(config)))


def stored_training(stored):
    """The training record of stored figures with every model default filled in (records written before the
    model config was resolved left defaults out)."""
    training = stored.get('training') or {}
    try:
        return {**training, 'model': GeneratorConfig.from_dict(training.get('model') or {}).to_dict()}
    except ConfigError:
        return training


def stored_evaluation(path, settings, config):
    """A run's evaluation saved at path with these settings, or None. Figures of a run trained with another
    config are a ConfigError: they would be reused in its place."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        stored = json.load(f)
    if stored_training(stored) != training_record(config):
        raise ConfigError(f'{path} holds the figures of a run trained with another config; delete it and the '
                          "run's output folder, or choose another results_dir")
    return stored if stored['settings'] == settings else None


def evaluate_run(config, settings, data_root, probe, device, path):
    """Measure a trained run (likelihoods, sample qualities) and save the result to path."""
    folder = config['args']['output_dir']
    model = load_generator(os.path.join(folder, LAST_CHECKPOINT), use_ema=bool(config['args']['ema']), device=device)
    codes, labels = heldout_codes(model, data_root, settings)
    result = {'settings': settings, 'training': training_record(config), 'sides': model.sides,
              'likelihood': [likelihood(model, codes, labels, s, settings['batch_size'])
                             for s in settings['likelihood_schedules']],
              'samples': [measure_samples(model, s, settings, data_root, probe, folder)
                          for s in settings['sample_schedules']]}
    with atomic_write(path, 'w') as f:
        json.dump(result, f, indent=1)
    return result


def mean_std(values):
    """(mean, standard deviation over seeds or None for one seed)."""
    values = np.asarray(values, float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


PAIRED = {'likelihood': 'bits_per_image', 'samples': 'class_consistency'}  # compared with a reference run


def references(results, sweep):
    """{variant: the first variant of the sweep with the same pyramid (scale sides)}; a variant is its own."""
    sides = {variant: run['sides'] for variant in sweep['variants'] for seed in sweep['seeds']
             if (run := results.get(f'{variant}-seed{seed}'))}
    return {variant: next(v for v in sides if sides[v] == sides[variant]) for variant in sides}


def minus_reference(rows, reference_rows, metric):
    """rows with metric_minus_reference: the metric minus the reference run's at the same schedule."""
    return [{**row, f'{metric}_minus_reference': row[metric] - base[metric]} if metric in row else row
            for row, base in zip(rows, reference_rows)]


def paired_figures(results, sweep, reference):
    """Every run with the figures that pair it with runs of its own seed (which share its data order, so these
    spread less over seeds than the figures themselves): per likelihood row bits_above_most_steps (the NLL
    minus the run's NLL at its most serial steps, comparable across pyramids of different sizes), and, where
    the variant's reference has run with this seed, bits_per_image_minus_reference and
    class_consistency_minus_reference. reference: references(results, sweep)."""
    paired = {}
    for variant in reference:
        for seed in sweep['seeds']:
            run = results.get(f'{variant}-seed{seed}')
            if run is None:
                continue
            if run['likelihood']:
                most = max(run['likelihood'], key=lambda row: row['serial_steps'])['bits_per_image']
                run = {**run, 'likelihood': [{**row, 'bits_above_most_steps': row['bits_per_image'] - most}
                                             for row in run['likelihood']]}
            base = results.get(f'{reference[variant]}-seed{seed}')
            if reference[variant] != variant and base is not None:
                run.update({part: minus_reference(run[part], base[part], metric) for part, metric in PAIRED.items()})
            paired[f'{variant}-seed{seed}'] = run
    return paired


def aggregate(results, sweep):
    """{variant: {'reference': ..., 'likelihood': [...], 'samples': [...]}}: per schedule the serial steps and,
    per metric (paired_figures' included), the mean and standard deviation over the seeds that have it."""
    reference = references(results, sweep)
    paired = paired_figures(results, sweep, reference)
    table = {}
    for variant in reference:
        runs = [paired[name] for name in (f'{variant}-seed{seed}' for seed in sweep['seeds']) if name in paired]
        table[variant] = {'reference': reference[variant]}
        for part, metrics in (('likelihood', ('bits_per_image', 'bits_per_image_se', 'bits_above_most_steps',
                                              'bits_per_image_minus_reference')),
                              ('samples', ('class_consistency', 'frechet', 'fid', 'isc',
                                           'class_consistency_minus_reference'))):
            rows = []
            for entries in zip(*(run[part] for run in runs)):
                row = {'schedule': entries[0]['schedule'], 'serial_steps': entries[0]['serial_steps']}
                for metric in metrics:
                    values = [e[metric] for e in entries if metric in e]
                    if values:
                        row[metric], row[f'{metric}_std'] = mean_std(values)
                rows.append(row)
            table[variant][part] = rows
    return table


def number(mean, std, digits):
    return f'{mean:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None else '')


def markdown(table, sweep):
    seeds = ', '.join(map(str, sweep['seeds']))
    pairs = ', '.join(f'{variant} against {parts["reference"]}' for variant, parts in table.items()
                      if parts['reference'] != variant)
    lines = [f'Variants of `{sweep["base"]}`, training seeds {seeds} (the runs finished so far); mean ± standard '
             'deviation over the seeds. "Minus the reference": each run minus the run of the same seed of the '
             f'sweep\'s first variant with the same pyramid ({pairs or "none"}).', '']

    def table_lines(part, columns):
        lines = ['| variant | schedule | serial steps | ' + ' | '.join(column[1] for column in columns) + ' |',
                 '| --- ' * (3 + len(columns)) + '|']
        for variant, parts in table.items():
            for row in parts[part]:
                cells = [number(row[m], row[f'{m}_std'] if spread else None, d) if m in row else '–'
                         for m, _, d, spread in columns]
                lines.append(f"| {variant} | {format_schedule(row['schedule'])} | {row['serial_steps']} | "
                             + ' | '.join(cells) + ' |')
        return lines

    lines += table_lines('likelihood', [('bits_per_image', 'NLL (bits per image)', 1, True),
                                        ('bits_per_image_se', 'standard error over the images', 1, False),
                                        ('bits_above_most_steps', 'NLL above the most steps', 1, True),
                                        ('bits_per_image_minus_reference', 'NLL minus the reference', 1, True)])
    if any(parts['samples'] for parts in table.values()):
        n = sweep['evaluation']['num_samples']
        lines += [''] + table_lines('samples', [
            ('class_consistency', f'class consistency ({n} samples)', 3, True),
            ('class_consistency_minus_reference', 'class consistency minus the reference', 3, True),
            ('frechet', 'probe Fréchet', 2, True), ('fid', 'FID', 2, True)])
    return '\n'.join(lines) + '\n'


def plots(table, folder):
    """nll_vs_steps.png (the NLL above each variant's NLL at its most steps, which is comparable across pyramids
    of different sizes) and, with class-conditional samples, quality_vs_steps.png in folder."""
    def curves(part, metric):
        found = {}
        for variant, parts in table.items():
            rows = sorted((r for r in parts[part] if metric in r), key=lambda r: r['serial_steps'])
            if rows:
                std = [r[f'{metric}_std'] for r in rows]
                found[variant] = ([r['serial_steps'] for r in rows], [r[metric] for r in rows],
                                  None if None in std else std)
        return found

    written = []
    for part, metric, ylabel, name in (
            ('likelihood', 'bits_above_most_steps', 'NLL minus NLL at the most steps (bits per image)',
             'nll_vs_steps.png'),
            ('samples', 'class_consistency', 'class consistency of samples', 'quality_vs_steps.png')):
        found = curves(part, metric)
        if found:
            figure = curves_figure(found, 'total serial steps (log scale)', ylabel, ylabel + ' vs serial steps')
            save_figure(figure, os.path.join(folder, name))
            written.append(name)
    return written


def write_results(results, sweep):
    """results.json, results.md and the plots of the runs evaluated so far."""
    table = aggregate(results, sweep)
    folder = sweep['results_dir']
    with atomic_write(os.path.join(folder, 'results.json'), 'w') as f:
        json.dump({'sweep': sweep, 'runs': results, 'variants': table}, f, indent=1)
    with atomic_write(os.path.join(folder, 'results.md'), 'w') as f:
        f.write(markdown(table, sweep))
    written = plots(table, folder)
    print(f"{len(results)} run(s) in {folder}/results.json, results.md{''.join(', ' + name for name in written)}")
    return table


def run_sweep(sweep, device):
    """Check everything, then train and evaluate the runs seed by seed (every variant at the first seed
    first), rewriting the results after each; returns the aggregated table."""
    typed = {f'{variant}-seed{seed}': run_config(sweep, variant, seed)
             for seed in sweep['seeds'] for variant in sweep['variants']}
    first = next(iter(typed.values()))
    if first['args']['autoenc_train_config']:
        train_main.ensure_autoencoder(first)
    settings = sweep['evaluation']
    configs, data_roots = {}, {}
    for name, config in typed.items():  # every check before any training
        configs[name], data_roots[name] = train_main.resolve_run(config)
        sides = build_generator(configs[name]['model'], load_autoencoder_checkpoint=False).sides
        for schedule in settings['likelihood_schedules'] + settings['sample_schedules']:
            sweep_sample_settings(settings, schedule).check(sides, device)
    probes = {}
    if first['model'].class_cond and settings['sample_schedules']:
        for root in dict.fromkeys(data_roots.values()):  # one probe per dataset, the first one's in output_dir
            name = 'class_probe.pth' if not probes else f'class_probe-{len(probes)}.pth'
            probes[root] = sample_quality.train_probe(root, min(first['model'].img_size, 64), device,
                                                      os.path.join(sweep['output_dir'], name),
                                                      seed=settings['seed'], epochs=settings['probe_epochs'])
    results = {}
    for name, config in configs.items():
        path = os.path.join(sweep['results_dir'], 'runs', f'{name}.json')
        results[name] = stored_evaluation(path, settings, config)
        if results[name] is not None:
            print(f'{name}: trained and evaluated earlier ({path})')
            continue
        if finished(config):
            print(f'{name}: finished, not retrained')
        else:
            print(f'{name}: training into {config["args"]["output_dir"]}')
            train_main.train(config)
        print(f'{name}: evaluating')
        results[name] = evaluate_run(config, settings, data_roots[name], probes.get(data_roots[name]), device, path)
        write_results(results, sweep)
    return write_results(results, sweep)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True,
                        help='sweep YAML: base, output_dir, results_dir, seeds, variants, evaluation')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    args = parser.parse_args(argv)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    with exit_on_error():
        run_sweep(read_sweep(args.config), device)


if __name__ == '__main__':
    main()
