"""The tables and plots of a sweep (main_sweep.py) from its runs' figures: per variant and schedule the mean and
standard deviation over seeds of every figure, the figures paired with the same seed's run of a reference
variant, the ceiling (real images against real images), each run's code version, and the sampling times taken
alone (main_sweep.py --retime) where there are any."""
import os

import numpy as np

from models.checkerboard import format_schedule
from util.figures import curves_figure, save_figure
from util.provenance import short_version

# figures compared with the reference run of the same seed, per part of a run's record
PAIRED = {'likelihood': ('bits_per_image', 'top_scale_bits'),
          'samples': ('class_consistency', 'frechet', 'precision', 'recall', 'two_sample_accuracy')}
AGGREGATED = {'likelihood': ('bits_per_image', 'bits_per_image_se', 'top_scale_bits', 'bits_above_most_steps',
                             'seconds'),
              'samples': ('class_consistency', 'frechet', 'precision', 'recall', 'two_sample_accuracy', 'fid', 'isc',
                          'seconds_per_image')}
# main_sweep's likelihood_views: {split: likelihood rows of that split's images as training sees them}, each made a
# likelihood part of its own, with the likelihood's figures
VIEW_PARTS = {'train': 'likelihood_train_views', 'val': 'likelihood_val_views'}
VIEW_TITLES = {'likelihood_train_views': 'training images as training sees them (one TenCrop view each)',
               'likelihood_val_views': 'held-out val images in the same views (one TenCrop view each)'}
# the ceiling of a sample figure: the same figure for real images against real images
CEILING = {'class_consistency': 'real_class_consistency', 'frechet': 'frechet_real', 'precision': 'precision_real',
           'recall': 'recall_real', 'two_sample_accuracy': 'two_sample_accuracy_real'}


def mean_std(values):
    """(mean, standard deviation over seeds or None for one seed)."""
    values = np.asarray(values, float)
    return float(values.mean()), (float(values.std(ddof=1)) if len(values) > 1 else None)


def run_names(sweep, variant):
    return [f'{variant}-seed{seed}' for seed in sweep['seeds']]


def references(results, sweep):
    """{variant: the first variant of the sweep with the same pyramid (scale sides)}; a variant is its own."""
    sides = {variant: run['sides'] for variant in sweep['variants'] for name in run_names(sweep, variant)
             if (run := results.get(name))}
    return {variant: next(v for v in sides if sides[v] == sides[variant]) for variant in sides}


def minus_reference(rows, reference_rows, metrics):
    """rows with METRIC_minus_reference: the metric minus the reference run's at the same schedule."""
    base = {format_schedule(row['schedule']): row for row in reference_rows}
    paired = []
    for row in rows:
        other = base.get(format_schedule(row['schedule']), {})
        paired.append({**row, **{f'{m}_minus_reference': row[m] - other[m] for m in metrics
                                 if m in row and m in other}})
    return paired


def part_metrics(part, figures):
    """PAIRED or AGGREGATED (figures) of a part; a likelihood-views part has the likelihood's."""
    return figures['likelihood' if part.startswith('likelihood') else part]


def with_derived_figures(run):
    """A run with its likelihood_views as parts of their own (VIEW_PARTS) and, per row of every likelihood part,
    the figures derived from the part's own rows: top_scale_bits (the NLL of the top scale alone, beyond the coarser
    ones) and bits_above_most_steps (the NLL minus the part's NLL at its most serial steps, comparable across
    pyramids of different sizes)."""
    parts = {'likelihood': run['likelihood'],
             **{VIEW_PARTS[split]: rows for split, rows in (run.get('likelihood_views') or {}).items()}}
    derived = {}
    for part, rows in parts.items():
        most = max(rows, key=lambda row: row['serial_steps'])['bits_per_image'] if rows else None
        derived[part] = [{**row, 'top_scale_bits': row['bits_per_scale'][-1],
                          'bits_above_most_steps': row['bits_per_image'] - most} for row in rows]
    return {**run, **derived}


def run_parts(run):
    """The parts of a run (with_derived_figures'), likelihood first."""
    return ['likelihood', *(part for part in VIEW_PARTS.values() if part in run), 'samples']


def paired_figures(results, sweep, reference):
    """Every run with its derived figures (with_derived_figures) and the figures that pair it with runs of its
    own seed (which share its data order, so these spread less over seeds than the figures themselves): where
    the variant's reference has run with this seed, METRIC_minus_reference for every PAIRED metric.
    reference: references(results, sweep)."""
    derived = {name: with_derived_figures(run) for name, run in results.items()}
    paired = {}
    for variant in reference:
        for seed, name in zip(sweep['seeds'], run_names(sweep, variant)):
            run = derived.get(name)
            if run is None:
                continue
            base = derived.get(f'{reference[variant]}-seed{seed}')
            if reference[variant] != variant and base is not None:
                run = {**run, **{part: minus_reference(run[part], base[part], part_metrics(part, PAIRED))
                                 for part in run_parts(run) if part in base}}
            paired[name] = run
    return paired


def ceiling(results):
    """The real-against-real figures of the sweep's runs ({} when none has them): {figure: value}, the mean when
    runs differ (they share the probe, the data and the sample count, so they should not)."""
    found = {}
    for run in results.values():
        for key, value in (run.get('ceiling') or {}).items():
            found.setdefault(key, []).append(value)
    return {key: float(np.mean(values)) for key, values in found.items()}


def training_summary(runs):
    """The training of a variant's runs ({} without training records): epochs, tokens per image and their product
    (the training compute at the sweep's batch and data), and the optimizer steps (train_steps) and training
    hours (train_seconds) that the runs recorded, mean and standard deviation over those that did."""
    trained = [run for run in runs if run.get('training')]
    if not trained:
        return {}
    epochs, tokens = trained[0]['training']['args']['epochs'], sum(side * side for side in trained[0]['sides'])
    summary = {'epochs': epochs, 'tokens_per_image': tokens, 'token_epochs': epochs * tokens}
    for key, recorded, scale in (('steps', 'train_steps', 1), ('hours', 'train_seconds', 1 / 3600)):
        values = [run['provenance'][recorded] * scale for run in trained
                  if (run.get('provenance') or {}).get(recorded) is not None]
        if values:
            summary[key], summary[f'{key}_std'] = mean_std(values)
    return summary


def with_times_alone(rows, timed_rows):
    """Sample rows with seconds_per_image_alone (and its _min, _max) of the timed rows of the same schedule."""
    timed = {format_schedule(row['schedule']): row for row in timed_rows}
    return [{**row, **{key.replace('seconds_per_image', 'seconds_per_image_alone'): value
                       for key, value in timed.get(format_schedule(row['schedule']), {}).items()
                       if key.startswith('seconds_per_image')}} for row in rows]


def aggregate(results, sweep, times=None):
    """{variant: {'reference', 'versions', 'machines', 'training', 'likelihood': [...], 'samples': [...]}}: per
    schedule the serial steps and, per figure (paired_figures' included), the mean and standard deviation over the
    seeds that have it; versions: the code versions its runs were measured with; machines: {run: the machine it
    was measured on, or None}; training: training_summary. times: the sampling times taken alone
    (main_sweep.timed_alone), added to the sample rows as seconds_per_image_alone."""
    reference = references(results, sweep)
    paired = paired_figures(results, sweep, reference)
    table = {}
    for variant in reference:
        names = [name for name in run_names(sweep, variant) if name in paired]
        runs = [paired[name] for name in names]
        versions = sorted({short_version((run.get('provenance') or {}).get('code')) for run in runs})
        machines = {name: (run.get('provenance') or {}).get('machine') for name, run in zip(names, runs)}
        trained = {name: (run.get('provenance') or {}).get('train_sessions') for name, run in zip(names, runs)}
        table[variant] = {'reference': reference[variant], 'versions': versions, 'machines': machines,
                          'trained': trained,
                          'training': training_summary(runs)}
        for part in dict.fromkeys(part for run in runs for part in run_parts(run)):
            paired_metrics = part_metrics(part, PAIRED)
            metrics = part_metrics(part, AGGREGATED) + tuple(f'{m}_minus_reference' for m in paired_metrics)
            rows = []
            for entries in zip(*(run[part] for run in runs if part in run)):
                row = {'schedule': entries[0]['schedule'], 'serial_steps': entries[0]['serial_steps']}
                for metric in metrics:
                    values = [e[metric] for e in entries if metric in e]
                    if values:
                        row[metric], row[f'{metric}_std'] = mean_std(values)
                rows.append(row)
            table[variant][part] = rows
        if times and variant in times['variants']:
            table[variant]['samples'] = with_times_alone(table[variant]['samples'], times['variants'][variant])
    return table


def number(mean, std, digits):
    return f'{mean:.{digits}f}' + (f' ± {std:.{digits}f}' if std is not None else '')


LIKELIHOOD_COLUMNS = [('bits_per_image', 'NLL (bits per image)', 1, True),
                      ('bits_per_image_se', 'standard error over the images', 1, False),
                      ('top_scale_bits', 'NLL of the top scale', 1, True),
                      ('bits_above_most_steps', 'NLL above the most steps', 1, True),
                      ('bits_per_image_minus_reference', 'NLL minus the reference', 1, True),
                      ('top_scale_bits_minus_reference', 'top-scale NLL minus the reference', 1, True)]
SAMPLE_COLUMNS = [('class_consistency', 'class consistency', 3, True),
                  ('class_consistency_minus_reference', 'minus the reference', 3, True),
                  ('frechet', 'probe Fréchet', 2, True), ('frechet_minus_reference', 'minus the reference', 2, True),
                  ('precision', 'precision', 3, True), ('recall', 'recall', 3, True),
                  ('two_sample_accuracy', 'two-sample accuracy', 3, True),
                  ('two_sample_accuracy_minus_reference', 'minus the reference', 3, True),
                  ('seconds_per_image', 'sampling s / image', 4, True),
                  ('seconds_per_image_alone', 'sampling s / image, timed alone', 4, False), ('fid', 'FID', 2, True)]


def training_lines(table):
    """The training table of markdown (no lines when no run recorded its training)."""
    rows = [(variant, parts['training']) for variant, parts in table.items() if parts['training']]
    if not rows:
        return []
    lines = ['Training compute (at the same batch and data: epochs × tokens per image) and the training wall time '
             'the checkpoints recorded (mean over the runs that recorded it):', '',
             '| variant | epochs | tokens per image | epochs × tokens per image | optimizer steps | training hours |',
             '| --- | --- | --- | --- | --- | --- |']
    for variant, t in rows:
        steps = f"{t['steps']:,.0f}" if 'steps' in t else '–'
        hours = number(t['hours'], t['hours_std'], 2) if 'hours' in t else '–'
        lines.append(f"| {variant} | {t['epochs']} | {t['tokens_per_image']} | {t['token_epochs']:,} | {steps} | "
                     f"{hours} |")
    return lines + ['']


def times_line(table, times):
    """How the sampling times alone were taken, and their spread over the rounds."""
    rows = [row for parts in table.values() for row in parts['samples'] if 'seconds_per_image_alone' in row]
    spread = max((row['seconds_per_image_alone_max'] - row['seconds_per_image_alone_min'])
                 / row['seconds_per_image_alone'] for row in rows)
    provenance = times['provenance']
    return (f"Sampling times \"timed alone\" (main_sweep.py --retime, {provenance['date']}, "
            f"{provenance['machine']}, code {short_version(provenance['code'])}): the median over {times['rounds']} "
            f"interleaved rounds of one batch of {times['batch_size']} per variant and schedule, with "
            f"random weights; the slowest round was at most {100 * spread:.0f}% above the fastest. The other "
            "sampling times were taken during the sweep, with other runs training.")


def machines_line(table):
    """Where the runs were measured (and trained, unless resumed elsewhere): the most common machine by its
    count, every other one with its runs."""
    by_machine = {}
    for parts in table.values():
        for name, machine in parts['machines'].items():
            by_machine.setdefault(machine or 'not recorded', []).append(name)
    if not by_machine:
        return 'Measured on: no runs.'
    (usual, usual_runs), *others = sorted(by_machine.items(), key=lambda item: -len(item[1]))
    return (f'Measured on (and trained on, unless a run was resumed elsewhere): {usual} ({len(usual_runs)} '
            'runs)' + ''.join(f'; {machine}: {", ".join(names)}' for machine, names in others) + '.')


def training_line(table):
    """How the runs were trained, from the sessions their checkpoints recorded: each machine and resolved precision
    with its runs, and the runs (or sessions) that did not record it."""
    by_setting, unknown = {}, []
    for parts in table.values():
        for name, sessions in (parts.get('trained') or {}).items():
            for session in sessions or [{}]:
                if session.get('machine') is None:
                    unknown.append(name)
                else:
                    setting = f"{session['machine']}, {session['precision']}"
                    by_setting.setdefault(setting, []).append(name)
    line = 'Trained on: ' + ('; '.join(f'{setting} ({", ".join(dict.fromkeys(names))})'
                                       for setting, names in by_setting.items()) or 'no runs recorded it')
    if unknown:
        line += f'; not recorded (trained before runs recorded it): {", ".join(dict.fromkeys(unknown))}'
    return line + '.'


def markdown(table, sweep, real, times=None):
    """results.md: the likelihood and sample tables, the ceiling row, the code versions and the machines. real:
    ceiling(); times: the sampling times taken alone (main_sweep.timed_alone) or None."""
    seeds = ', '.join(map(str, sweep['seeds']))
    pairs = ', '.join(f'{variant} against {parts["reference"]}' for variant, parts in table.items()
                      if parts['reference'] != variant)
    versions = '; '.join(f'{variant}: {", ".join(parts["versions"])}' for variant, parts in table.items())
    lines = [f'Variants of `{sweep["base"]}`, training seeds {seeds} (the runs finished so far); mean ± standard '
             'deviation over the seeds. "Minus the reference": each run minus the run of the same seed of the '
             f'sweep\'s first variant with the same pyramid ({pairs or "none"}). Code versions measured with: '
             f'{versions or "none"}. {machines_line(table)} {training_line(table)}', '']

    def table_lines(part, columns):
        columns = [c for c in columns if any(c[0] in row for parts in table.values() for row in parts.get(part, []))]
        lines = ['| variant | schedule | serial steps | ' + ' | '.join(column[1] for column in columns) + ' |',
                 '| --- ' * (3 + len(columns)) + '|']
        for variant, parts in table.items():
            for row in parts.get(part, []):
                cells = [number(row[m], row[f'{m}_std'] if spread else None, d) if m in row else '–'
                         for m, _, d, spread in columns]
                lines.append(f"| {variant} | {format_schedule(row['schedule'])} | {row['serial_steps']} | "
                             + ' | '.join(cells) + ' |')
        if part == 'samples' and real:
            cells = [number(real[CEILING[m]], None, d) if CEILING.get(m) in real else '–' for m, _, d, _ in columns]
            lines.append('| real images (ceiling) | – | – | ' + ' | '.join(cells) + ' |')
        return lines

    lines += training_lines(table) + table_lines('likelihood', LIKELIHOOD_COLUMNS)
    for part, title in VIEW_TITLES.items():
        if any(part in parts for parts in table.values()):
            n = sweep['evaluation']['likelihood_images']
            lines += ['', f'NLL of {n} {title}:', ''] + table_lines(part, LIKELIHOOD_COLUMNS)
    if any(parts['samples'] for parts in table.values()):
        n = sweep['evaluation']['num_samples']
        lines += ['', f'{n} samples per schedule; the figures in the probe\'s feature space compare them with '
                  'a set of real val images of the same size; the ceiling row gives each figure for a second, '
                  'disjoint set of real val images.', ''] + table_lines('samples', SAMPLE_COLUMNS)
        if times:
            lines += ['', times_line(table, times)]
    return '\n'.join(lines) + '\n'


def curves(table, part, metric, x='serial_steps'):
    """{variant: (x, y, yerr or None)} of one figure, in the order of serial steps (so that a curve against time
    follows the schedules, wherever their times fall)."""
    found = {}
    for variant, parts in table.items():
        rows = sorted((r for r in parts[part] if metric in r and x in r), key=lambda r: r['serial_steps'])
        if rows:
            std = [r[f'{metric}_std'] for r in rows]
            found[variant] = ([r[x] for r in rows], [r[metric] for r in rows], None if None in std else std)
    return found


STEPS, TIME = ('serial_steps',), ('seconds_per_image_alone', 'seconds_per_image')  # x axes, the first with data
X_LABELS = {'serial_steps': 'total serial steps (log scale)',
            'seconds_per_image': 'sampling seconds per image (log scale)',
            'seconds_per_image_alone': 'sampling seconds per image, timed alone (log scale)'}
PLOTS = [  # file, part, figure, its label, x axes
    ('nll_vs_steps.png', 'likelihood', 'bits_above_most_steps', 'NLL minus NLL at the most steps (bits per image)',
     STEPS),
    ('quality_vs_steps.png', 'samples', 'class_consistency', 'class consistency of samples', STEPS),
    ('frechet_vs_steps.png', 'samples', 'frechet', 'probe Fréchet distance to real images', STEPS),
    ('two_sample_vs_steps.png', 'samples', 'two_sample_accuracy', 'two-sample accuracy (0.5: indistinguishable)',
     STEPS),
    ('quality_vs_time.png', 'samples', 'class_consistency', 'class consistency of samples', TIME),
    ('frechet_vs_time.png', 'samples', 'frechet', 'probe Fréchet distance to real images', TIME),
]


def plots(table, folder, real):
    """The PLOTS that have data, in folder; a sample figure with a ceiling gets it as a dashed line."""
    written = []
    for name, part, metric, ylabel, axes in PLOTS:
        x, found = next(((x, found) for x in axes if (found := curves(table, part, metric, x))), (None, None))
        if not found:
            continue
        xlabel = X_LABELS[x]
        line = (real[CEILING[metric]], 'real images') if CEILING.get(metric) in real else None
        figure = curves_figure(found, xlabel, ylabel, f'{ylabel} vs {xlabel.split(" (")[0]}', line)
        save_figure(figure, os.path.join(folder, name))
        written.append(name)
    return written
