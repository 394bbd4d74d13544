"""main_sweep.py: variants x seeds trained with the normal trainer, resumed after a kill without retraining
finished runs, evaluated once (likelihood at every schedule, sample quality), results and plots written."""
import hashlib
import itertools
import json
import os
import threading

import pytest
import torch
import yaml
from PIL import Image

import main as train_main
import main_sweep
from conftest import write_tiny_run
from data.builtin import ensure_builtin_dataset
from evaluation import sampling_time, sweep_tables
from util.checkpoint import load_checkpoint
from util.file_lock import file_lock


@pytest.fixture(scope='module')
def base(tmp_path_factory):
    """A tiny built-in dataset, a random stride-8 autoencoder and a one-epoch training config."""
    d = tmp_path_factory.mktemp('sweep')
    write_tiny_run(d, 'base.yaml', (2, 1), model=dict(llama_config=dict(
        hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=1)),
                   args=dict(batch_size=4, epochs=1, warmup_epochs=0.0, save_every_steps=1))
    return d


def write_sweep(base, out, **changes):
    sweep = dict(base=str(base / 'base.yaml'), output_dir=str(out), seeds=[0],
                 variants={'checkerboard': {}, 'raster': {'model.scan_order': 'raster'}},
                 evaluation=dict(likelihood_schedules=[1, 4, [1, 2, 3]], likelihood_images=6, sample_schedules=[2],
                                 num_samples=6, batch_size=3, probe_epochs=1, two_sample_epochs=1))
    sweep.update(changes)
    path = out.parent / f'{out.name}.yaml'
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_killed_sweep_resumes_without_retraining_and_writes_results(base, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'sweep'
    config = write_sweep(base, out, variants={'checkerboard': {}, 'raster': {'model.scan_order': 'raster'},
                                              'one-scale': {'model.one_scale': True, 'model.scan_order': 'raster',
                                                            'evaluation.likelihood_schedules': [1, 16]}})
    step = train_main.Trainer.train_step

    def dies_in_raster(self, batch):
        if 'raster' in self.args['output_dir'] and self.step == 2:
            raise KeyboardInterrupt  # a kill in the middle of the second run
        return step(self, batch)

    monkeypatch.setattr(train_main.Trainer, 'train_step', dies_in_raster)
    with pytest.raises(KeyboardInterrupt):
        main_sweep.main(['--config', config, '--device', 'cpu'])
    done = (out / 'checkerboard-seed0' / 'checkpoint-last.pth').read_bytes()
    assert load_checkpoint(out / 'raster-seed0' / 'checkpoint-last.pth')['step'] == 2
    monkeypatch.setattr(train_main.Trainer, 'train_step', step)
    killed = out / 'raster-seed0' / 'checkpoint-last.pth'
    torch.save({**load_checkpoint(killed), 'train_seconds': 1000.0}, killed)  # as if killed after 1,000 s
    versions = itertools.chain([{'commit': 'a' * 40, 'clean': True}], itertools.repeat({'commit': 'b' * 40}))
    monkeypatch.setattr(main_sweep, 'code_version', lambda **_: next(versions))  # a commit while the sweep runs
    capsys.readouterr()
    main_sweep.main(['--config', config, '--device', 'cpu'])
    printed = capsys.readouterr()
    assert 'checkerboard-seed0: trained and evaluated earlier' in printed.out
    assert 'resumed from' in printed.out and 'raster-seed0' in printed.out
    assert (out / 'checkerboard-seed0' / 'checkpoint-last.pth').read_bytes() == done
    results = json.loads((out / 'results.json').read_text())
    likelihood = results['runs']['raster-seed0']['likelihood']
    assert [row['serial_steps'] for row in likelihood] == [3, 1 + 4 + 4, 1 + 2 + 4]  # sides 1, 2, 4
    assert all(row['bits_per_image'] > 0 and len(row['bits_per_scale']) == 3 for row in likelihood)
    top = {row['serial_steps']: row['top_scale_bits'] for row in results['variants']['raster']['likelihood']}
    assert top == {row['serial_steps']: row['bits_per_scale'][-1] for row in likelihood}
    one_scale = results['runs']['one-scale-seed0']
    assert one_scale['sides'] == [4] and [row['serial_steps'] for row in one_scale['likelihood']] == [1, 16]
    provenance = results['runs']['raster-seed0']['provenance']
    assert 1000 < provenance['train_seconds'] < 1600  # both sessions of the killed run
    assert provenance['train_steps'] == load_checkpoint(killed)['step'] > 2
    assert provenance['code']['commit'] == 'a' * 40  # the version this process started with
    assert provenance['data_root'] == str(base / 'shapes')
    assert len(provenance['autoencoder_sha256']) == 64 and len(provenance['probe_sha256']) == 64
    assert provenance['software']['torch'] == torch.__version__
    quality = results['variants']['checkerboard']['samples'][0]
    assert 0 <= quality['class_consistency'] <= 1 and quality['class_consistency_std'] is None
    assert 0 <= quality['two_sample_accuracy'] <= 1 and quality['seconds_per_image'] > 0
    assert {'real_class_consistency', 'frechet_real', 'two_sample_accuracy_real'} <= set(results['ceiling'])
    table = (out / 'results.md').read_text()
    assert '| raster | 1,2,3 | 7 |' in table and '| real images (ceiling) |' in table
    assert all(row['bits_per_image_se'] > 0 for row in likelihood)
    for name in ('nll_vs_steps.png', 'quality_vs_steps.png', 'quality_vs_time.png'):
        with Image.open(out / name) as image:
            assert image.size[0] > 100
    cached = os.stat(out / 'runs' / 'raster-seed0.json').st_mtime_ns
    main_sweep.main(['--config', config, '--device', 'cpu'])  # nothing left to do: the evaluation is reused
    assert os.stat(out / 'runs' / 'raster-seed0.json').st_mtime_ns == cached
    capsys.readouterr()
    new_settings = write_sweep(base, out, evaluation=dict(
        likelihood_schedules=[2], likelihood_images=6, sample_schedules=[], num_samples=6, batch_size=3))
    with pytest.raises(SystemExit) as e:  # other settings: one line, what differs and what to do
        main_sweep.main(['--config', new_settings])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and 'other evaluation settings (likelihood_schedules' in err[0]
    assert '--remeasure' in err[0]
    main_sweep.main(['--config', new_settings, '--remeasure'])  # measured again from the checkpoints only
    printed = capsys.readouterr().out
    assert 'raster-seed0: finished, not retrained' in printed and 'training into' not in printed
    assert [row['serial_steps'] for row in json.loads((out / 'runs' / 'raster-seed0.json').read_text())
            ['likelihood']] == [1 + 2 + 2]
    config = write_sweep(base, out, variants={'raster': {'model.scan_order': 'raster', 'args.epochs': 2}})
    with pytest.raises(SystemExit) as e:  # figures of a run trained otherwise are never reused
        main_sweep.main(['--config', config, '--device', 'cpu'])
    assert e.value.code == 2 and "another training config (args.epochs: 1 there, 2 now)" in capsys.readouterr().err


def sweep_once(base, out, **changes):
    """A finished one-variant sweep: its config path."""
    config = write_sweep(base, out, variants={'checkerboard': {}}, **changes)
    main_sweep.main(['--config', config, '--device', 'cpu'])
    return config


def test_likelihood_views_measure_training_and_heldout_images_as_training_sees_them(base, tmp_path):
    out = tmp_path / 'sweep'
    sweep_once(base, out, evaluation=dict(likelihood_schedules=[1, 4], likelihood_images=6, sample_schedules=[],
                                          likelihood_views=['train', 'val'], batch_size=3))
    run = json.loads((out / 'runs' / 'checkerboard-seed0.json').read_text())
    assert set(run['likelihood_views']) == {'train', 'val'}
    for rows in run['likelihood_views'].values():
        assert [row['serial_steps'] for row in rows] == [row['serial_steps'] for row in run['likelihood']]
        assert all(row['bits_per_image'] > 0 for row in rows)
    center = [row['bits_per_image'] for row in run['likelihood']]
    assert [row['bits_per_image'] for row in run['likelihood_views']['val']] != center  # other pixels
    variant = json.loads((out / 'results.json').read_text())['variants']['checkerboard']
    train = variant['likelihood_train_views']
    assert train[-1]['bits_above_most_steps'] == 0  # derived from the part's own rows
    assert train[0]['bits_above_most_steps'] == pytest.approx(train[0]['bits_per_image'] - train[-1]['bits_per_image'])
    table = (out / 'results.md').read_text()
    assert 'NLL of 6 training images as training sees them' in table
    assert 'NLL of 6 held-out val images in the same views' in table


def test_figures_stored_before_a_setting_existed_stand_for_its_default(base, tmp_path, capsys):
    out = tmp_path / 'sweep'
    config = sweep_once(base, out)
    run = out / 'runs' / 'checkerboard-seed0.json'
    stored = json.loads(run.read_text())
    del stored['settings']['likelihood_views']  # as written before the setting existed
    run.write_text(json.dumps(stored))
    capsys.readouterr()
    main_sweep.main(['--config', config, '--device', 'cpu'])
    assert 'checkerboard-seed0: trained and evaluated earlier' in capsys.readouterr().out


def test_a_sweep_uses_another_sweeps_probe_from_its_assets_dir(base, tmp_path, capsys):
    first = tmp_path / 'first'
    sweep_once(base, tmp_path / 'sweep', results_dir=str(first))
    probe = (first / 'class_probe.pth').read_bytes()
    capsys.readouterr()
    second = tmp_path / 'second'
    sweep_once(base, tmp_path / 'sweep2', results_dir=str(second), assets_dir=str(first))
    assert 'not retraining' in capsys.readouterr().out
    assert not (second / 'class_probe.pth').exists() and (first / 'class_probe.pth').read_bytes() == probe
    provenance = json.loads((second / 'runs' / 'checkerboard-seed0.json').read_text())['provenance']
    assert provenance['probe_sha256'] == hashlib.sha256(probe).hexdigest()


@pytest.mark.parametrize('key, message', [('autoencoder_sha256', 'another autoencoder'),
                                          ('probe_sha256', 'another class probe')])
def test_figures_of_another_autoencoder_or_probe_are_refused_then_remeasured(base, tmp_path, capsys, key, message):
    out = tmp_path / 'sweep'
    config = sweep_once(base, out)
    run = out / 'runs' / 'checkerboard-seed0.json'
    stored = json.loads(run.read_text())
    real = stored['provenance'][key]
    stored['provenance'][key] = '0' * 64  # the figures were measured with other files
    run.write_text(json.dumps(stored))
    checkpoint = (out / 'checkerboard-seed0' / 'checkpoint-last.pth').read_bytes()
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main_sweep.main(['--config', config, '--device', 'cpu'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and f'{message} (sha256 000000000000, now {real[:12]})' in err[0]
    main_sweep.main(['--config', config, '--device', 'cpu', '--remeasure'])
    assert 'training into' not in capsys.readouterr().out
    remeasured = json.loads(run.read_text())['provenance']
    assert remeasured[key] == real
    assert remeasured['train_seconds'] == stored['provenance']['train_seconds'] > 0  # the checkpoint's time
    assert (out / 'checkerboard-seed0' / 'checkpoint-last.pth').read_bytes() == checkpoint


def test_a_leftover_checkpoint_of_another_config_is_refused(base, tmp_path, capsys):
    out = tmp_path / 'sweep'
    sweep_once(base, out, results_dir=str(tmp_path / 'first'))
    raster = write_sweep(base, out, variants={'checkerboard': {'model.scan_order': 'raster'}},
                         results_dir=str(tmp_path / 'second'))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:  # the folder holds a checkerboard run that would be measured as raster
        main_sweep.main(['--config', raster, '--device', 'cpu'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "holds a run of another config (model.scan_order: 'checkerboard' there, 'raster' in this sweep)" in err[0]
    assert not (tmp_path / 'second' / 'runs').exists()


def test_a_variant_with_its_own_data_is_evaluated_on_it(base, tmp_path):
    other = tmp_path / 'other'
    ensure_builtin_dataset(str(other), 'shapes32', train_per_class=2, val_per_class=2, seed=5)
    out = tmp_path / 'sweep'
    config = write_sweep(base, out, variants={'checkerboard': {}, 'other-data': {'args.data_path': str(other)}})
    main_sweep.main(['--config', config, '--device', 'cpu'])
    runs = json.loads((out / 'results.json').read_text())['runs']
    assert runs['checkerboard-seed0']['provenance']['data_root'] == str(base / 'shapes')
    assert runs['other-data-seed0']['provenance']['data_root'] == str(other)
    assert (out / 'class_probe-shapes.pth').is_file() and (out / 'class_probe-other.pth').is_file()
    assert runs['other-data-seed0']['provenance']['probe_sha256'] != runs['checkerboard-seed0']['provenance'][
        'probe_sha256']


def test_runs_shared_between_two_processes(base, tmp_path, monkeypatch, capsys):
    """--runs trains only the named runs; a run that another process measured while this one was training is
    neither trained nor measured again, and the tables hold it."""
    out = tmp_path / 'sweep'
    config = write_sweep(base, out)
    main_sweep.main(['--config', config, '--device', 'cpu', '--runs', 'raster-seed0'])
    assert not (out / 'checkerboard-seed0').exists()
    assert set(json.loads((out / 'results.json').read_text())['runs']) == {'raster-seed0'}
    raster = out / 'runs' / 'raster-seed0.json'
    finished_elsewhere = raster.read_bytes()
    raster.unlink()
    train = train_main.train

    def other_process_finishes_raster(config):
        raster.write_bytes(finished_elsewhere)
        return train(config)

    monkeypatch.setattr(train_main, 'train', other_process_finishes_raster)
    capsys.readouterr()
    main_sweep.main(['--config', config, '--device', 'cpu'])
    assert 'raster-seed0: trained and evaluated earlier' in capsys.readouterr().out
    assert raster.read_bytes() == finished_elsewhere
    assert set(json.loads((out / 'results.json').read_text())['runs']) == {'checkerboard-seed0', 'raster-seed0'}
    with pytest.raises(SystemExit) as e:
        main_sweep.main(['--config', config, '--device', 'cpu', '--runs', 'random-seed0'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert '--runs: random-seed0 not in this sweep; its runs are checkerboard-seed0, raster-seed0' in err[0]


def test_the_same_command_twice_shares_the_runs(base, tmp_path, capsys):
    """A run that another process holds (its lock) is passed by, and taken by the next start."""
    out = tmp_path / 'sweep'
    config = write_sweep(base, out)
    with file_lock(str(out / 'raster-seed0.lock')):  # another process is training raster
        main_sweep.main(['--config', config, '--device', 'cpu'])
    assert 'raster-seed0: another process is training or measuring it; skipped' in capsys.readouterr().out
    assert not (out / 'raster-seed0').exists()
    assert set(json.loads((out / 'results.json').read_text())['runs']) == {'checkerboard-seed0'}
    main_sweep.main(['--config', config, '--device', 'cpu'])
    assert 'raster-seed0: training into' in capsys.readouterr().out
    assert set(json.loads((out / 'results.json').read_text())['runs']) == {'checkerboard-seed0', 'raster-seed0'}


def test_a_second_start_waits_for_the_setup_of_the_first(base, tmp_path, capsys):
    """The checks, the autoencoder and the class probe are made under OUTPUT_DIR/setup.lock."""
    out = tmp_path / 'sweep'
    config = write_sweep(base, out, variants={'checkerboard': {}})
    with file_lock(str(out / 'setup.lock')):  # the first process, training the probe
        second = threading.Thread(target=main_sweep.main, args=(['--config', config, '--device', 'cpu'],))
        second.start()
        second.join(timeout=1)
        assert second.is_alive() and not (out / 'class_probe.pth').exists()
    second.join(timeout=300)
    assert not second.is_alive() and (out / 'runs' / 'checkerboard-seed0.json').is_file()
    assert 'setup: another process is checking the runs' in capsys.readouterr().out


@pytest.mark.parametrize('changes, message', [
    ({'variantz': {}}, "unknown key 'sweep.variantz'"),
    ({'variants': {'a': {'args.epochz': 2}}}, "variant a: unknown key 'args.epochz'"),
    ({'variants': {'a': {'model.scan_ordr': 'raster'}}}, "variant a: unknown key 'model.scan_ordr'"),
    ({'evaluation': {'likelihood_schedules': [[1, 2]]}}, 'has 2 entries but the model has 3 scales'),
    ({'evaluation': {'likelihood_views': ['test']}}, 'evaluation.likelihood_views must list splits of train, val'),
])
def test_bad_sweep_configs_are_one_line(base, tmp_path, capsys, changes, message):
    config = write_sweep(base, tmp_path / 'bad', **changes)
    with pytest.raises(SystemExit) as e:
        main_sweep.main(['--config', config, '--device', 'cpu'])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and message in err[-1], err


def test_paired_figures_cancel_what_a_seed_shares():
    """Seeds whose NLLs differ by a constant: the NLL spreads over the seeds, the NLL above each run's
    most-steps NLL (what the plot shows) and the difference to the reference variant (same pyramid, same seed)
    do not; a variant with another pyramid is its own reference."""
    def run(offset, shift=0.0, sides=(1, 2, 4)):
        return {'sides': list(sides), 'samples': [],
                'likelihood': [{'schedule': s, 'serial_steps': n, 'bits_per_image': bits + offset + shift,
                                'bits_per_scale': [1.0, bits + offset + shift - 1.0]}
                               for s, n, bits in ((1, 3, 110.0), (4, 7, 100.0))]}
    sweep = {'variants': {'a': {}, 'b': {}, 'c': {}}, 'seeds': [0, 1]}
    results = {'a-seed0': run(0.0), 'a-seed1': run(20.0), 'b-seed0': run(0.0, -3.0), 'b-seed1': run(20.0, -3.0),
               'c-seed0': run(0.0, sides=(1, 4))}
    table = sweep_tables.aggregate(results, sweep)
    rows = table['a']['likelihood']
    assert [row['bits_above_most_steps'] for row in rows] == [10.0, 0.0]
    assert [row['bits_above_most_steps_std'] for row in rows] == [0.0, 0.0]
    assert rows[0]['bits_per_image_std'] == pytest.approx(14.142, abs=1e-3)
    assert [(row['bits_per_image_minus_reference'], row['bits_per_image_minus_reference_std'])
            for row in table['b']['likelihood']] == [(-3.0, 0.0), (-3.0, 0.0)]
    assert [row['top_scale_bits'] for row in rows] == [119.0, 109.0]  # the last scale's bits, mean over seeds
    assert [row['top_scale_bits_minus_reference'] for row in table['b']['likelihood']] == [-3.0, -3.0]
    assert [parts['reference'] for parts in table.values()] == ['a', 'a', 'c']
    assert 'bits_per_image_minus_reference' not in table['c']['likelihood'][0]
    assert '(b against a)' in sweep_tables.markdown(table, {**sweep, 'base': 'base.yaml', 'evaluation': {}}, {})


def test_paired_frechet_and_the_ceiling_by_hand():
    """Two seeds of a reference and a variant, sample figures at two schedules (the variant's listed in another
    order): the paired Frechet is the per-seed difference at the same schedule, its mean and standard deviation
    over seeds are those of (2, 4) and (-1, -3); the ceiling row holds the real-against-real figures; the training
    table states the compute and the mean training hours of the runs that recorded them; the machines line names
    the run measured on another machine, the training line each training machine and precision and the run that
    did not record them."""
    def run(frechet_by_schedule, consistency, seed, train_seconds, machine='Xeon'):
        sessions = None if train_seconds is None else [{'first_step': 0, 'machine': machine, 'precision': 'fp32',
                                                         'processes': 1}]
        return {'sides': [1, 2], 'likelihood': [], 'training': {'args': {'epochs': 3}},
                'provenance': {'code': {'commit': f'{seed}234567abc', 'clean': seed == 0}, 'train_steps': 12,
                               'train_seconds': train_seconds, 'machine': machine, 'train_sessions': sessions},
                'ceiling': {'real_class_consistency': 0.98, 'frechet_real': 1.5, 'two_sample_accuracy_real': 0.52},
                'samples': [{'schedule': s, 'serial_steps': s * 2, 'frechet': f, 'class_consistency': consistency}
                            for s, f in frechet_by_schedule]}
    sweep = {'variants': {'ref': {}, 'var': {}}, 'seeds': [0, 1], 'base': 'base.yaml', 'evaluation': {'num_samples': 8}}
    results = {'ref-seed0': run([(1, 10.0), (4, 6.0)], 0.9, 0, 3600.0),
               'ref-seed1': run([(1, 12.0), (4, 7.0)], 0.8, 1, 7200.0),
               'var-seed0': run([(4, 5.0), (1, 12.0)], 0.7, 0, None),  # a checkpoint that did not record it
               'var-seed1': run([(4, 4.0), (1, 16.0)], 0.8, 1, 5400.0, machine='EPYC')}
    table = sweep_tables.aggregate(results, sweep)
    by_schedule = {row['schedule']: row for row in table['var']['samples']}
    assert by_schedule[1]['frechet_minus_reference'] == 3.0  # mean of 12 - 10 and 16 - 12
    assert by_schedule[1]['frechet_minus_reference_std'] == pytest.approx(2 ** 0.5)  # std of (2, 4)
    assert by_schedule[4]['frechet_minus_reference'] == -2.0  # mean of 5 - 6 and 4 - 7
    assert by_schedule[4]['class_consistency_minus_reference'] == pytest.approx(-0.1)  # (0.7 - 0.9, 0.8 - 0.8)
    real = sweep_tables.ceiling(results)
    assert real == {'real_class_consistency': 0.98, 'frechet_real': 1.5, 'two_sample_accuracy_real': 0.52}
    text = sweep_tables.markdown(table, sweep, real)
    ceiling_row = next(line for line in text.splitlines() if line.startswith('| real images (ceiling)'))
    assert ceiling_row.split(' | ')[3:5] == ['0.980', '–'] and '1.50' in ceiling_row
    assert 'ref: 0234567, 1234567+changes' in text
    assert 'resumed elsewhere): Xeon (3 runs); EPYC: var-seed1.' in text
    assert ('Trained on: Xeon, fp32 (ref-seed0, ref-seed1); EPYC, fp32 (var-seed1); not recorded (trained before '
            'runs recorded it): var-seed0.') in text
    assert table['ref']['training']['hours_std'] == pytest.approx(0.5 ** 0.5)  # std of 1 and 2 hours
    assert '| ref | 3 | 5 | 15 | 12 | 1.50 ± 0.71 |' in text  # 3 epochs x 5 tokens (sides 1, 2)
    assert '| var | 3 | 5 | 15 | 12 | 1.50 |' in text  # the one run that recorded its time


def test_retime_interleaves_the_models_and_keeps_the_median_of_the_timed_rounds(monkeypatch):
    """One untimed round, then every (model, schedule) in turn each round; seconds per image: the median."""
    clock, order = [0.0], []
    costs = {('a', 1): [100.0, 3.0, 1.0, 2.0], ('a', 4): [100.0, 6.0, 6.0, 9.0], ('b', 2): [100.0, 4.0, 5.0, 3.0]}

    def fake_draw(model, settings, indices, num_samples, seed, batch_size):  # settings: the schedule here
        assert len(indices) == num_samples == batch_size == 2
        pair = model.name, settings
        clock[0] += costs[pair][order.count(pair)]  # seconds of this pair's next batch
        order.append(pair)
        yield indices, None, None

    class Model:
        def __init__(self, name):
            self.name, self.sides = name, [1, 2, 4]

    monkeypatch.setattr(sampling_time, 'draw_samples', fake_draw)
    monkeypatch.setattr(sampling_time.time, 'perf_counter', lambda: clock[0])
    times = sampling_time.time_sampling({'a': Model('a'), 'b': Model('b')}, {'a': [1, 4], 'b': [2]},
                                        lambda name, schedule: schedule, batch_size=2, rounds=3)
    assert order == [('a', 1), ('a', 4), ('b', 2)] * 4
    assert times['a'][0] == {'schedule': 1, 'serial_steps': 3, 'seconds_per_image': 1.0, 'seconds_per_image_min': 0.5,
                             'seconds_per_image_max': 1.5}
    assert [row['seconds_per_image'] for row in times['a'] + times['b']] == [1.0, 3.0, 2.0]  # medians / 2 images


def test_retimed_sampling_feeds_the_tables_while_it_fits_the_settings(base, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'sweep'
    config = write_sweep(base, out, variants={'checkerboard': {}, 'raster': {'model.scan_order': 'raster',
                                                                             'evaluation.sample_schedules': [1, 2]}})
    main_sweep.main(['--config', config, '--device', 'cpu'])
    xlabels, figure = [], sweep_tables.curves_figure
    monkeypatch.setattr(sweep_tables, 'curves_figure', lambda found, xlabel, *rest: xlabels.append(xlabel) or figure(
        found, xlabel, *rest))
    main_sweep.main(['--config', config, '--device', 'cpu', '--retime', '--rounds', '2'])
    times = json.loads((out / 'sampling_times.json').read_text())
    assert times['rounds'] == 2 and 'torch thread' in times['provenance']['machine']
    results = json.loads((out / 'results.json').read_text())
    for variant, schedules in (('checkerboard', [2]), ('raster', [1, 2])):
        rows = times['variants'][variant]['rows']
        assert [row['schedule'] for row in rows] == schedules
        assert all(0 < r['seconds_per_image_min'] <= r['seconds_per_image'] <= r['seconds_per_image_max'] for r in rows)
        table_rows = results['variants'][variant]['samples']
        assert [row['seconds_per_image_alone'] for row in table_rows] == [row['seconds_per_image'] for row in rows]
        assert [row['serial_steps'] for row in table_rows] == [row['serial_steps'] for row in rows]
    assert 'sampling s / image, timed alone' in (out / 'results.md').read_text()
    assert xlabels.count(sweep_tables.X_LABELS['seconds_per_image_alone']) == 2  # consistency and Fréchet
    assert sweep_tables.X_LABELS['seconds_per_image'] not in xlabels
    other_cfg = write_sweep(base, out, variants={'checkerboard': {}, 'raster': {'model.scan_order': 'raster',
                                                                                'evaluation.sample_schedules': [1, 2]}},
                            evaluation=dict(likelihood_schedules=[1, 4, [1, 2, 3]], likelihood_images=6, cfg=3.0,
                                            sample_schedules=[2], num_samples=6, batch_size=3, probe_epochs=1,
                                            two_sample_epochs=1))
    capsys.readouterr()
    main_sweep.main(['--config', other_cfg, '--device', 'cpu', '--tables_only'])
    assert 'checkerboard was timed with other sample settings or another model' in capsys.readouterr().out
    assert 'seconds_per_image_alone' not in json.dumps(json.loads((out / 'results.json').read_text())['variants'])


def test_a_curve_against_time_follows_the_schedules():
    rows = [{'serial_steps': steps, 'seconds_per_image': t, 'frechet': f, 'frechet_std': None}
            for steps, t, f in ((29, 0.06, 3.0), (5, 0.08, 5.0), (341, 0.16, 2.0), (9, 0.07, 4.0))]
    found = sweep_tables.curves({'checkerboard': {'samples': rows}}, 'samples', 'frechet', 'seconds_per_image')
    assert found == {'checkerboard': ([0.08, 0.07, 0.06, 0.16], [5.0, 4.0, 3.0, 2.0], None)}
