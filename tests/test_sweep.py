"""main_sweep.py: variants x seeds trained with the normal trainer, resumed after a kill without retraining
finished runs, evaluated once (likelihood at every schedule, sample quality), results and plots written."""
import json
import os

import pytest
import yaml
from PIL import Image

import main as train_main
import main_sweep
from conftest import write_tiny_run
from util.checkpoint import load_checkpoint


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
                                 num_samples=6, batch_size=3, probe_epochs=1))
    sweep.update(changes)
    path = out.parent / f'{out.name}.yaml'
    path.write_text(yaml.safe_dump(sweep))
    return str(path)


def test_killed_sweep_resumes_without_retraining_and_writes_results(base, tmp_path, monkeypatch, capsys):
    out = tmp_path / 'sweep'
    config = write_sweep(base, out)
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
    quality = results['variants']['checkerboard']['samples'][0]
    assert 0 <= quality['class_consistency'] <= 1 and quality['class_consistency_std'] is None
    assert '| raster | 1,2,3 | 7 |' in (out / 'results.md').read_text()
    assert all(row['bits_per_image_se'] > 0 for row in likelihood)
    for name in ('nll_vs_steps.png', 'quality_vs_steps.png'):
        with Image.open(out / name) as image:
            assert image.size[0] > 100
    cached = os.stat(out / 'runs' / 'raster-seed0.json').st_mtime_ns
    main_sweep.main(['--config', config, '--device', 'cpu'])  # nothing left to do: the evaluation is reused
    assert os.stat(out / 'runs' / 'raster-seed0.json').st_mtime_ns == cached
    capsys.readouterr()
    main_sweep.main(['--config', write_sweep(base, out, evaluation=dict(  # new settings: measured again only
        likelihood_schedules=[2], likelihood_images=6, sample_schedules=[], num_samples=6, batch_size=3))])
    printed = capsys.readouterr().out
    assert 'raster-seed0: finished, not retrained' in printed and 'training into' not in printed
    assert [row['serial_steps'] for row in json.loads((out / 'runs' / 'raster-seed0.json').read_text())
            ['likelihood']] == [1 + 2 + 2]
    config = write_sweep(base, out, variants={'raster': {'model.scan_order': 'raster', 'args.epochs': 2}})
    with pytest.raises(SystemExit) as e:  # figures of a run trained otherwise are never reused
        main_sweep.main(['--config', config, '--device', 'cpu'])
    assert e.value.code == 2 and 'trained with another config' in capsys.readouterr().err


@pytest.mark.parametrize('changes, message', [
    ({'variantz': {}}, "unknown key 'sweep.variantz'"),
    ({'variants': {'a': {'args.epochz': 2}}}, "variant a: unknown key 'args.epochz'"),
    ({'variants': {'a': {'model.scan_ordr': 'raster'}}}, "variant a: unknown key 'model.scan_ordr'"),
    ({'evaluation': {'likelihood_schedules': [[1, 2]]}}, 'has 2 entries but the model has 3 scales'),
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
                'likelihood': [{'schedule': s, 'serial_steps': n, 'bits_per_image': bits + offset + shift}
                               for s, n, bits in ((1, 3, 110.0), (4, 7, 100.0))]}
    sweep = {'variants': {'a': {}, 'b': {}, 'c': {}}, 'seeds': [0, 1]}
    results = {'a-seed0': run(0.0), 'a-seed1': run(20.0), 'b-seed0': run(0.0, -3.0), 'b-seed1': run(20.0, -3.0),
               'c-seed0': run(0.0, sides=(1, 4))}
    table = main_sweep.aggregate(results, sweep)
    rows = table['a']['likelihood']
    assert [row['bits_above_most_steps'] for row in rows] == [10.0, 0.0]
    assert [row['bits_above_most_steps_std'] for row in rows] == [0.0, 0.0]
    assert rows[0]['bits_per_image_std'] == pytest.approx(14.142, abs=1e-3)
    assert [(row['bits_per_image_minus_reference'], row['bits_per_image_minus_reference_std'])
            for row in table['b']['likelihood']] == [(-3.0, 0.0), (-3.0, 0.0)]
    assert [parts['reference'] for parts in table.values()] == ['a', 'a', 'c']
    assert 'bits_per_image_minus_reference' not in table['c']['likelihood'][0]
    assert '(b against a)' in main_sweep.markdown(table, {**sweep, 'base': 'base.yaml'})
