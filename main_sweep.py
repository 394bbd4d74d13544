"""Ablation sweeps: train variants of one config and measure each at several sampling schedules.

    python main_sweep.py --config configs/sweeps/ablations.yaml [--remeasure | --tables_only | --retime] [--runs ...]

The sweep config names a base training config (what main.py takes), the variants (dotted overrides of its
model: and args: keys, and of evaluation.likelihood_schedules / evaluation.sample_schedules), the training
seeds and the evaluation. Every variant x seed trains with main.py's trainer into OUTPUT_DIR/<variant>-seed<seed>/
(a rerun resumes an interrupted run) and is then evaluated on its own data, its figures saved as
RESULTS_DIR/runs/<variant>-seed<seed>.json (default RESULTS_DIR: OUTPUT_DIR) with their provenance: the code
version, the sha256 of the autoencoder and of the class probe, the resolved training config, the evaluation
settings, torch's version, the machine, and the wall time of training and of every measurement:
- the exact negative log-likelihood of held-out codes (the val split, ADM center crop; models.likelihood)
  under every likelihood schedule, in bits per image and per scale; for the splits in
  evaluation.likelihood_views, the same of a seeded subset of that split's images as training sees them (one
  TenCrop view each): train views against val views tell overfitting from the rest;
- sample quality at every sample schedule (evaluation.sample_quality.probe_report, evaluation.two_sample):
  class consistency, the probe's Frechet distance, precision and recall in its feature space, the held-out
  accuracy of a classifier told to separate the samples from real val images, the sampling time per image,
  and torch-fidelity FID / IS where Inception weights are given and the data has an eval_reference folder;
  beside them the ceiling, each figure for real val images against a disjoint set of real val images.

A stored run is reused only when its autoencoder, probe, resolved config and evaluation settings are this
sweep's; otherwise the sweep stops with one line saying what differs: --remeasure measures the runs' existing
checkpoints again (no retraining), or choose another results_dir. A finished checkpoint is evaluated only when
its own config and autoencoder are the run's. Portability: when the sweep trains its autoencoder
(args.autoenc_train_config of the base config), its weights and config are kept in ASSETS_DIR/autoencoder/ and
every run uses that copy, and the class probe is kept as ASSETS_DIR/class_probe.pth (default ASSETS_DIR:
RESULTS_DIR; another sweep's results folder shares its files); with these two files committed beside the figures,
a clone resumes the sweep on another machine without retraining either (docs/design.md). --tables_only rewrites
the tables and plots from the stored runs without checking them.
--retime times sampling again, for the sampling-time axis: the runs' in-sweep times are taken while other runs
train. It times every variant that has a stored run at each of its sample schedules in one process, interleaved
(evaluation.sampling_time), with its run's resolved model config, random weights (the time does not depend on
them) and the sweep's autoencoder, and saves RESULTS_DIR/sampling_times.json with the code version, machine and
date; the tables and the time plots then use these times where they fit the variant's settings and model. Run it
alone on the machine, when the sweep is done.
Processes can share a sweep, one thread each: the same command started twice takes the runs in turn. A
process holds a run's file lock (OUTPUT_DIR/<run>.lock) while it trains and measures it, and the others pass
it by; the autoencoder, the probe and the token cache are made by one process while the others wait. A lock
goes with its process, so a killed sweep restarts with the same commands. Each process rewrites the tables
from every stored run. --runs trains and measures only the named runs.

After each run it rewrites RESULTS_DIR/results.json, results.md and the plots (evaluation.sweep_tables): one
curve per variant against the total number of serial steps (and the sampling time per image), error bars the
standard deviation over seeds. Runs of one seed share their data order, so the tables also give each run minus
the same seed's run of its reference (the sweep's first variant with the same pyramid). Runs go seed by seed,
so every variant has one seed before any has two.
"""
import argparse
import json
import math
import os
import time

import numpy as np
import torch
import yaml

import main as train_main
from data.image_folder import load_real_images
from evaluation import sample_quality, sweep_tables
from evaluation.sampling_time import time_sampling
from evaluation.two_sample import two_sample_accuracy
from models import build_generator, load_generator
from models.autoencoder import load_autoencoder, save_autoencoder
from models.checkerboard import format_schedule, serial_steps
from models.generator_config import AutoencoderFiles, GeneratorConfig
from models.likelihood import bits, code_log_likelihood
from models.load import resolve_path
from models.sample_batches import draw_samples
from models.sample_settings import SampleSettings
from util.atomic import atomic_write
from util.checkpoint import flatten, load_checkpoint
from util.config import ConfigError, check_keys, read_config
from util.file_lock import file_lock
from util.images import from_uint8, save_png
from util.provenance import code_version, file_sha256, machine, short_version, software
from util.run_dir import LAST_CHECKPOINT, exit_on_error

SWEEP_KEYS = ('base', 'output_dir', 'results_dir', 'assets_dir', 'seeds', 'variants', 'evaluation')
EVALUATION = {  # key: default
    'likelihood_schedules': [1, 2, 4, 8, 16, 64],  # a schedule: steps for every scale, or a list, one per scale
    'likelihood_images': 1000,  # held-out val images (a seeded subset)
    'likelihood_views': [],  # splits (train, val) also measured as training sees them: a TenCrop view each
    'sample_schedules': [1, 4],
    'num_samples': 500,
    'batch_size': 100,
    'cfg': 2.0,
    'cfg_start_step': 1,
    'temperature': 1.0,
    'seed': 0,
    'probe_epochs': 20,
    'two_sample_epochs': 10,  # training epochs of the two-sample classifier (0: no two-sample test)
    'inception_weights': None,
}
POSITIVE = ('likelihood_images', 'num_samples', 'batch_size', 'probe_epochs')
VIEW_SPLITS = ('train', 'val')
PER_VARIANT = ('likelihood_schedules', 'sample_schedules')  # evaluation keys a variant may override
AUTOENCODER_PATHS = ('model.autoenc.config_path', 'model.autoenc.checkpoint_path')  # where, not what: not compared
TIMES_FILE = 'sampling_times.json'  # in RESULTS_DIR, written by --retime
TIMED_SETTINGS = ('sample_schedules', 'batch_size', 'cfg', 'cfg_start_step', 'temperature', 'seed')


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
    for key in POSITIVE + ('two_sample_epochs',):
        value = sweep['evaluation'][key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (key in POSITIVE):
            raise ConfigError(f'{path}: evaluation.{key} must be a whole number >= {int(key in POSITIVE)}, '
                              f'got {value!r}')
    sweep.setdefault('seeds', [0])
    sweep.setdefault('output_dir', os.path.join('outputs', os.path.splitext(os.path.basename(path))[0]))
    sweep.setdefault('results_dir', sweep['output_dir'])
    sweep.setdefault('assets_dir', sweep['results_dir'])
    if not isinstance(sweep['variants'], dict) or not all(isinstance(v or {}, dict)
                                                          for v in sweep['variants'].values()):
        raise ConfigError(f'{path}: variants must map a name to its overrides ({{model.scan_order: raster}})')
    views = sweep['evaluation']['likelihood_views']
    if not isinstance(views, list) or not set(views) <= set(VIEW_SPLITS) or len(set(views)) < len(views):
        raise ConfigError(f'{path}: evaluation.likelihood_views must list splits of {", ".join(VIEW_SPLITS)} '
                          f'at most once each, got {views!r}')
    for variant, overrides in sweep['variants'].items():
        evaluation = {k[len('evaluation.'):] for k in overrides or {} if k.startswith('evaluation.')}
        check_keys(evaluation, PER_VARIANT, f'variants.{variant}.evaluation', source=path)
    return sweep


def run_config(sweep, variant, seed):
    """The typed training config of one run (main.typed_config): the base config, the variant's overrides, the
    seed and the run folder."""
    overrides = {k: v for k, v in (sweep['variants'][variant] or {}).items() if not k.startswith('evaluation.')}
    args = {key.removeprefix('args.'): value for key, value in overrides.items() if not key.startswith('model.')}
    model = {key[len('model.'):]: value for key, value in overrides.items() if key.startswith('model.')}
    args.update(seed=seed, output_dir=os.path.join(sweep['output_dir'], f'{variant}-seed{seed}'))
    try:
        return train_main.typed_config(read_config(sweep['base'], train_main.TRAIN_OPTIONS, args, model))
    except ConfigError as e:
        raise ConfigError(f'variant {variant}: {e}') from None


def run_settings(sweep, variant):
    """The evaluation settings of a variant: the sweep's, with the variant's evaluation.* overrides."""
    overrides = sweep['variants'][variant] or {}
    return {**sweep['evaluation'], **{k[len('evaluation.'):]: v for k, v in overrides.items()
                                      if k.startswith('evaluation.')}}


def sweep_sample_settings(settings, schedule):
    """The SampleSettings of the sweep's samples at one schedule."""
    return SampleSettings(cfg=settings['cfg'], cfg_start_step=settings['cfg_start_step'],
                          temperature=settings['temperature'], steps_per_scale=schedule)


# ---- the sweep's autoencoder and probe ---------------------------------------------------------------------

def prepare_autoencoder(sweep, configs):
    """The run configs with the autoencoder they use. When the base config trains its autoencoder
    (args.autoenc_train_config), its weights and config are kept in ASSETS_DIR/autoencoder/ (trained and
    copied there when missing) and every run uses that copy."""
    first = next(iter(configs.values()))
    if not first['args']['autoenc_train_config']:
        return configs
    folder = os.path.join(sweep['assets_dir'], 'autoencoder')
    weights, config_file = os.path.join(folder, 'checkpoint.pth'), os.path.join(folder, 'autoencoder_config.yaml')
    if not os.path.isfile(weights):
        files = train_main.ensure_autoencoder(first)['model'].autoenc
        save_autoencoder(load_autoencoder(files.config_path, files.checkpoint_path, params=files.params), folder)
        print(f'autoencoder: weights and config kept in {folder} (sha256 {file_sha256(weights)[:12]})')
    kept = AutoencoderFiles(config_path=config_file, checkpoint_path=weights)
    return {name: {**config, 'model': config['model'].replace(autoenc=kept)} for name, config in configs.items()}


def probe_path(sweep, data_root, data_roots):
    """ASSETS_DIR/class_probe.pth, or class_probe-<dataset folder>.pth when the runs use several datasets."""
    if len(set(data_roots)) == 1:
        return os.path.join(sweep['assets_dir'], 'class_probe.pth')
    return os.path.join(sweep['assets_dir'], f'class_probe-{os.path.basename(os.path.normpath(data_root))}.pth')


def real_ceiling(data_root, img_size, settings, device):
    """The two-sample accuracy of real val images against a disjoint set of real val images, of the samples'
    number and size (the sets of probe_report): the two-sample test's ceiling."""
    if not settings['two_sample_epochs']:
        return {}
    images, _, _ = load_real_images(data_root, 'val', img_size, log=lambda message: None)
    real_a, real_b = sample_quality.real_halves(images, settings['num_samples'], settings['seed'])
    return {'two_sample_accuracy_real': two_sample_accuracy(real_a, real_b, img_size, device, settings['seed'],
                                                            settings['two_sample_epochs'])}


# ---- measurements ------------------------------------------------------------------------------------------

def image_codes(model, data_root, settings, split='val', views=False):
    """Codes [(N, s, s)] and labels (N,) of a seeded subset of data_root/split, ADM center-cropped, or with
    views, each image in one of the TenCrop views that training draws from."""
    images, labels, _ = load_real_images(data_root, split, model.img_size, settings['likelihood_images'],
                                         settings['seed'], log=lambda message: None, views=views)
    x = from_uint8(images)  # (N, 3, S, S)
    parts = [model.codes_from_images(x[i:i + 256].to(model.seq_positions.device)) for i in range(0, len(x), 256)]
    return [torch.cat(scale) for scale in zip(*parts)], torch.from_numpy(labels)


def likelihood(model, codes, labels, schedule, batch_size):
    """Mean NLL in bits per image (with its standard error over the images) and per scale of the held-out codes
    under a schedule, and the seconds it took."""
    start = time.perf_counter()
    settings = SampleSettings(steps_per_scale=schedule)
    nats = torch.cat([code_log_likelihood(model, [c[i:i + batch_size] for c in codes],
                                          labels[i:i + batch_size] if model.class_cond else None, settings)
                      for i in range(0, len(labels), batch_size)])  # (N, scales)
    per_image = bits(-nats).sum(1)  # (N,)
    return {'schedule': schedule, 'serial_steps': serial_steps(model.sides, schedule),
            'bits_per_image': float(per_image.mean()), 'bits_per_image_se': float(per_image.std() / len(nats) ** 0.5),
            'bits_per_scale': bits(-nats).mean(0).tolist(), 'seconds': time.perf_counter() - start}


def measure_samples(model, schedule, settings, data_root, probe, real_images, folder):
    """The sample figures at one schedule (see the module docstring) of num_samples class-balanced seeded
    samples, with their ceilings under 'real'. real_images: val set A (uint8) of the two-sample test, or None."""
    n, device = settings['num_samples'], model.seq_positions.device
    start = time.perf_counter()
    parts = list(draw_samples(model, sweep_sample_settings(settings, schedule), list(range(n)), n,
                              settings['seed'], settings['batch_size']))
    seconds = time.perf_counter() - start
    images = np.concatenate([images for _, _, images in parts])  # (N, H, W, 3) uint8
    record = {'schedule': schedule, 'serial_steps': serial_steps(model.sides, schedule),
              'sampling_seconds': seconds, 'seconds_per_image': seconds / n}
    real = {}
    if model.class_cond:
        labels = torch.cat([labels for _, labels, _ in parts])
        report = sample_quality.probe_report(probe, images, labels, data_root, device, seed=settings['seed'])
        p = report['class_consistency']
        record.update(class_consistency=p, class_consistency_se=math.sqrt(p * (1 - p) / n),
                      **{k: report[k] for k in ('frechet', 'precision', 'recall')})
        real = {k: report[k] for k in sweep_tables.CEILING.values() if k in report}
    if real_images is not None:
        record['two_sample_accuracy'] = two_sample_accuracy(images, real_images, model.img_size, device,
                                                            settings['seed'], settings['two_sample_epochs'])
    if settings['inception_weights']:
        sample_dir = os.path.join(folder, f'samples_{format_schedule(schedule)}')
        os.makedirs(sample_dir, exist_ok=True)
        for i, image in enumerate(images):
            save_png(image, os.path.join(sample_dir, f'{i:06d}.png'))
        record.update(sample_quality.fidelity_metrics(sample_dir, os.path.join(data_root, 'eval_reference'),
                                                      device, settings['inception_weights']))
    record['seconds'] = time.perf_counter() - start
    return record, real


# ---- provenance and reuse ----------------------------------------------------------------------------------

def training_record(config):
    """What a run was trained with (its resolved config), as stored beside its figures (JSON types)."""
    return json.loads(json.dumps(train_main.config_record(config)))


def normalized(record):
    """A stored training record with every model default filled in (records written before the model config was
    resolved left defaults out), flattened to dotted keys, the autoencoder's paths left out."""
    record = dict(record or {})
    try:
        record['model'] = GeneratorConfig.from_dict(record.get('model') or {}).to_dict()
    except ConfigError:
        pass
    return {k: v for k, v in flatten(record).items() if k not in AUTOENCODER_PATHS}


def first_difference(stored, current):
    """(dotted key, stored value, current value) of the first setting in which two training records differ."""
    stored, current = normalized(stored), normalized(current)
    differing = (k for k in {**stored, **current} if stored.get(k) != current.get(k))
    return next(((k, stored.get(k), current.get(k)) for k in differing), None)


def stale_reason(stored, expected):
    """Why stored figures cannot stand for this sweep's run (None if they can): expected holds the
    provenance hashes, the training record and the settings this sweep would measure with."""
    provenance = stored.get('provenance')
    if not provenance:
        return 'they were measured before runs recorded their provenance'

    def another(key, what):
        return f'another {what} (sha256 {str(provenance.get(key))[:12]}, now {str(expected["provenance"][key])[:12]})'

    if provenance.get('autoencoder_sha256') != expected['provenance']['autoencoder_sha256']:
        return another('autoencoder_sha256', 'autoencoder')
    difference = first_difference(stored.get('training'), expected['training'])
    if difference:
        return f'another training config ({difference[0]}: {difference[1]!r} there, {difference[2]!r} now)'
    settings = {**EVALUATION, **stored.get('settings', {})}  # a key added since: measured with its default
    if settings != expected['settings']:
        changed = sorted(k for k in {**settings, **expected['settings']}
                         if settings.get(k) != expected['settings'].get(k))
        return f'other evaluation settings ({", ".join(changed)})'
    if provenance.get('probe_sha256') != expected['provenance']['probe_sha256']:
        return another('probe_sha256', 'class probe')
    return None


def checkpoint_status(config, autoencoder_sha256):
    """'missing', 'unfinished' or 'finished' for the run's last checkpoint; a checkpoint of another config or
    autoencoder is a ConfigError (it would be resumed or measured in the run's place)."""
    args = config['args']
    path = os.path.join(args['output_dir'], LAST_CHECKPOINT)
    if not os.path.isfile(path):
        return 'missing'
    state = load_checkpoint(path)
    way_out = f'delete {args["output_dir"]} or choose another output_dir'
    difference = first_difference(state.get('config'), training_record(config))
    if difference:
        raise ConfigError(f'{path} holds a run of another config ({difference[0]}: {difference[1]!r} there, '
                          f'{difference[2]!r} in this sweep); {way_out}')
    if state.get('autoenc_sha256') != autoencoder_sha256:
        raise ConfigError(f'{path} was trained on another autoencoder (sha256 {str(state.get("autoenc_sha256"))[:12]}'
                          f', the sweep\'s is {autoencoder_sha256[:12]}); {way_out}')
    done = state['epoch'] >= args['epochs'] or bool(args['max_steps']) and state['step'] >= args['max_steps']
    return 'finished' if done else 'unfinished'


def recorded_training(config):
    """{'train_steps', 'train_seconds', 'train_sessions'} of the run's last checkpoint: its optimizer steps, its
    training wall time, every session summed (None for checkpoints written before 2026-12-03), and each session's
    machine, resolved precision, processes and first step (None for checkpoints written before 2026-12-06)."""
    state = load_checkpoint(os.path.join(config['args']['output_dir'], LAST_CHECKPOINT))
    return {'train_steps': state['step'], 'train_seconds': state.get('train_seconds'),
            'train_sessions': state.get('train_sessions')}


def evaluate_run(config, settings, data_root, probe, device, provenance, ceiling, path):
    """Measure a trained run (likelihoods, sample qualities) and save its figures with provenance to path."""
    folder = config['args']['output_dir']
    start = time.perf_counter()
    model = load_generator(os.path.join(folder, LAST_CHECKPOINT), use_ema=bool(config['args']['ema']), device=device)

    def likelihoods(codes, labels):
        return [likelihood(model, codes, labels, s, settings['batch_size']) for s in settings['likelihood_schedules']]

    heldout = likelihoods(*image_codes(model, data_root, settings))
    as_trained = {split: likelihoods(*image_codes(model, data_root, settings, split, views=True))
                  for split in settings['likelihood_views']}
    samples, real = [], dict(ceiling)
    real_images = None  # val set A of the two-sample test, read once for every schedule
    if settings['two_sample_epochs'] and settings['sample_schedules']:
        val, _, _ = load_real_images(data_root, 'val', model.img_size, log=lambda message: None)
        real_images = sample_quality.real_halves(val, settings['num_samples'], settings['seed'])[0]
    for schedule in settings['sample_schedules']:
        record, real_figures = measure_samples(model, schedule, settings, data_root, probe, real_images, folder)
        samples.append(record)
        real.update(real_figures)
    result = {'settings': settings, 'training': training_record(config), 'sides': model.sides,
              'provenance': {**provenance, 'software': software(), 'machine': machine(device),
                             'data_root': data_root, 'measure_seconds': time.perf_counter() - start},
              'ceiling': real, 'likelihood': heldout, 'samples': samples}
    if as_trained:
        result['likelihood_views'] = as_trained
    with atomic_write(path, 'w') as f:
        json.dump(result, f, indent=1)
    return result


# ---- the sweep -----------------------------------------------------------------------------------------------

def write_results(results, sweep):
    """results.json, results.md and the plots of the runs evaluated so far."""
    times = timed_alone(sweep, results)
    table = sweep_tables.aggregate(results, sweep, times)
    real = sweep_tables.ceiling(results)
    folder = sweep['results_dir']
    with atomic_write(os.path.join(folder, 'results.json'), 'w') as f:
        json.dump({'sweep': sweep, 'runs': results, 'variants': table, 'ceiling': real, 'sampling_times': times},
                  f, indent=1)
    with atomic_write(os.path.join(folder, 'results.md'), 'w') as f:
        f.write(sweep_tables.markdown(table, sweep, real, times))
    written = sweep_tables.plots(table, folder, real)
    print(f"{len(results)} run(s) in {folder}/results.json, results.md{''.join(', ' + name for name in written)}")
    return table


def stored_run_path(sweep, name):
    return os.path.join(sweep['results_dir'], 'runs', f'{name}.json')


def stored_run(path):
    """The figures stored at path, or None."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def stored_runs(sweep):
    """{run name: its stored figures} of every run of the sweep that has them."""
    names = (f'{variant}-seed{seed}' for seed in sweep['seeds'] for variant in sweep['variants'])
    results = {name: stored_run(stored_run_path(sweep, name)) for name in names}
    return {name: figures for name, figures in results.items() if figures is not None}


def first_stored_run(sweep, results, variant):
    """The stored figures of the variant's first seed that has them, or None."""
    return next((results[name] for name in sweep_tables.run_names(sweep, variant) if name in results), None)


def retime(sweep, device, rounds):
    """Time sampling of every variant with a stored run alone (see the module docstring) and save the times to
    RESULTS_DIR/sampling_times.json."""
    results = stored_runs(sweep)
    models, settings, timed_models = {}, {}, {}
    for variant in sweep['variants']:
        run, settings[variant] = first_stored_run(sweep, results, variant), run_settings(sweep, variant)
        if run is None or not settings[variant]['sample_schedules']:
            print(f'{variant}: no stored run with samples, not timed')
            continue
        timed_models[variant] = run['training']['model']
        models[variant] = build_generator(GeneratorConfig.from_dict(timed_models[variant]), device=device).eval()
    print(f'timing {len(models)} variant(s), {rounds} round(s), {torch.get_num_threads()} torch thread(s)')
    times = time_sampling(models, {v: settings[v]['sample_schedules'] for v in models},
                          lambda v, schedule: sweep_sample_settings(settings[v], schedule),
                          sweep['evaluation']['batch_size'], rounds, sweep['evaluation']['seed'])
    record = {'provenance': {'code': code_version(ignore=[sweep['results_dir']]), 'software': software(),
                             'machine': machine(device), 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())},
              'rounds': rounds, 'batch_size': sweep['evaluation']['batch_size'],
              'variants': {v: {'settings': {k: settings[v][k] for k in TIMED_SETTINGS}, 'model': timed_models[v],
                               'rows': times[v]} for v in models}}
    with atomic_write(os.path.join(sweep['results_dir'], TIMES_FILE), 'w') as f:
        json.dump(record, f, indent=1)


def timed_alone(sweep, results):
    """RESULTS_DIR/sampling_times.json with only the variants whose times fit their current sample settings and
    the model of their stored runs (a line for each that does not), or None when there is none."""
    path = os.path.join(sweep['results_dir'], TIMES_FILE)
    stored = stored_run(path)
    if stored is None:
        return None
    fitting = {}
    for variant, timed in stored['variants'].items():
        run = first_stored_run(sweep, results, variant) if variant in sweep['variants'] else None
        if run is None:
            continue
        if ({k: run_settings(sweep, variant)[k] for k in TIMED_SETTINGS} != timed['settings']
                or first_difference({'model': timed['model']}, {'model': run['training']['model']})):
            print(f'{path}: {variant} was timed with other sample settings or another model, its times are left '
                  'out; run --retime again')
            continue
        fitting[variant] = timed['rows']
    return {**stored, 'variants': fitting} if fitting else None


def settle_run(sweep, name, config, settings, data_root, provenance, probe, ceilings, device, remeasure):
    """Train (or resume) and measure one run unless its stored figures stand for it; True when it was measured.
    provenance: its autoencoder's and probe's sha256 and the code version; ceilings: {data root:
    real-against-real figures}, filled on first use."""
    path = stored_run_path(sweep, name)
    stored = stored_run(path)  # read now: another process may have measured it meanwhile
    reason = stale_reason(stored, {'provenance': provenance, 'training': training_record(config),
                                   'settings': settings}) if stored else None
    if stored and reason is None:
        print(f"{name}: trained and evaluated earlier ({path}, code {short_version(stored['provenance'].get('code'))})")
        return False
    if reason and not remeasure:
        raise ConfigError(f'{path} holds figures that cannot stand for this run: {reason}; run with --remeasure to '
                          'measure its checkpoint again (no retraining), or choose another results_dir')
    status = checkpoint_status(config, provenance['autoencoder_sha256'])
    if reason and status != 'finished':
        raise ConfigError(f'{name}: --remeasure needs its finished checkpoint in {config["args"]["output_dir"]} '
                          f'({status}); choose another results_dir to train it again')
    if status != 'finished':
        print(f'{name}: training into {config["args"]["output_dir"]}')
        train_main.train(config)
    else:
        print(f'{name}: finished, not retrained')
    if data_root not in ceilings:
        ceilings[data_root] = real_ceiling(data_root, config['model'].img_size, settings, device) if probe else {}
    print(f'{name}: evaluating')
    evaluate_run(config, settings, data_root, probe, device,
                 {**provenance, **recorded_training(config)},
                 ceilings[data_root], path)
    return True


def run_sweep(sweep, device, remeasure=False, only=None):
    """Check everything, then train and evaluate the runs seed by seed (every variant at the first seed
    first), or only the runs named in `only`, passing by those another process holds, rewriting the results
    from every stored run after each (once at the end when none needed evaluating)."""
    # of the code this process runs: read at its start (a later commit does not change it); the tables it writes
    # itself do not make the tree differ
    code = code_version(ignore=[sweep['results_dir']])
    runs = {f'{variant}-seed{seed}': (variant, seed) for seed in sweep['seeds'] for variant in sweep['variants']}
    unknown = sorted(set(only or ()) - set(runs))
    if unknown:
        raise ConfigError(f"--runs: {', '.join(unknown)} not in this sweep; its runs are {', '.join(runs)}")
    names = {name: variant for name, (variant, _) in runs.items()}
    with file_lock(os.path.join(sweep['output_dir'], 'setup.lock'), on_wait=lambda: print(
            'setup: another process is checking the runs or making the autoencoder or the probe; waiting for it')):
        configs = prepare_autoencoder(sweep, {name: run_config(sweep, *run) for name, run in runs.items()})
        data_roots, autoencoder_sha256 = {}, {}
        for name, config in configs.items():  # every check before any training
            configs[name], data_roots[name] = train_main.resolve_run(config)
            settings = run_settings(sweep, names[name])
            sides = build_generator(configs[name]['model'], load_autoencoder_checkpoint=False).sides
            for schedule in settings['likelihood_schedules'] + settings['sample_schedules']:
                sweep_sample_settings(settings, schedule).check(sides, device)
            autoencoder_sha256[name] = file_sha256(resolve_path(configs[name]['model'].autoenc.checkpoint_path))
        first = next(iter(configs.values()))
        probes, ceilings = {}, {}
        if first['model'].class_cond and any(run_settings(sweep, v)['sample_schedules'] for v in sweep['variants']):
            for root in dict.fromkeys(data_roots.values()):
                path = probe_path(sweep, root, data_roots.values())
                probe = sample_quality.train_probe(root, min(first['model'].img_size, 64), device, path,
                                                   seed=sweep['evaluation']['seed'],
                                                   epochs=sweep['evaluation']['probe_epochs'])
                probes[root] = (probe, file_sha256(path))
    evaluated = False
    for name, config in configs.items():
        if only and name not in only:
            continue
        with file_lock(os.path.join(sweep['output_dir'], f'{name}.lock'), wait=False) as mine:
            if not mine:
                print(f'{name}: another process is training or measuring it; skipped')
                continue
            probe, probe_sha256 = probes.get(data_roots[name], (None, None))
            provenance = {'autoencoder_sha256': autoencoder_sha256[name], 'probe_sha256': probe_sha256, 'code': code}
            if settle_run(sweep, name, config, run_settings(sweep, names[name]), data_roots[name], provenance,
                          probe, ceilings, device, remeasure):
                evaluated = True
                write_results(stored_runs(sweep), sweep)  # with the runs another process finished meanwhile
    if not evaluated:
        write_results(stored_runs(sweep), sweep)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--config', required=True,
                        help='sweep YAML: base, output_dir, results_dir, seeds, variants, evaluation')
    parser.add_argument('--device', help='cpu or cuda (default: cuda when available)')
    which = parser.add_mutually_exclusive_group()
    which.add_argument('--remeasure', action='store_true',
                       help='measure again, from their finished checkpoints, the runs whose stored figures do not fit')
    which.add_argument('--tables_only', action='store_true',
                       help='rewrite the tables and plots from the stored runs, without checking or running anything')
    which.add_argument('--retime', action='store_true',
                       help='time sampling of every variant with a stored run, alone and interleaved, for the '
                            'tables and time plots (run it with nothing else on the machine)')
    parser.add_argument('--rounds', type=int, default=3, help='--retime: timing rounds (the median is kept)')
    parser.add_argument('--runs', nargs='+', metavar='NAME',
                        help='train and evaluate only these runs (VARIANT-seedS); the tables hold every stored run')
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f'--rounds must be at least 1, got {args.rounds}')
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    with exit_on_error():
        sweep = read_sweep(args.config)
        if args.retime:
            retime(sweep, device, args.rounds)
        if args.tables_only or args.retime:
            write_results(stored_runs(sweep), sweep)
        else:
            run_sweep(sweep, device, args.remeasure, args.runs)


if __name__ == '__main__':
    main()
