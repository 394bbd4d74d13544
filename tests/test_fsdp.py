"""main.py --fsdp and --grad_checkpointing (gloo, CPU): sharded training equals one plain process, sharded
checkpoints resume at another world size and without FSDP, a killed save leaves the previous one loadable,
and reading a sharded checkpoint unpickles nothing but plain data."""
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

import main as train_main
from conftest import write_tiny_run
from models import load_generator
from models.sample_settings import SampleSettings
from util import sharded_checkpoint
from util.checkpoint import CheckpointError, load_checkpoint
from util.sharded_checkpoint import latest_save, load_state, read_sharded, save_sharded

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """A tiny config (EMA, clipping, random block sizes and code replacement, 5 steps per epoch); one plain
    process trained STEPS and 2 * STEPS steps; two FSDP processes trained STEPS steps on the same global batch (as
    they are, with gradient checkpointing, and accumulating 2 micro-batches beside two DDP processes that do: a
    micro-batch draws its own block sizes, so accumulation is compared at the same split)."""
    d = tmp_path_factory.mktemp('fsdp')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the torchrun processes: the same sums in the same order
    write_tiny_run(d, 'tiny.yaml', (4, 2), model=dict(random_block_size=True, random_replace=0.1),
                   args=dict(warmup_epochs=0.5, ema=0.9, clip_grad=1.0))
    for name, steps in (('plain', 2 * STEPS), (f'plain_{STEPS}', STEPS)):
        train_main.main(['--config', str(d / 'tiny.yaml'), '--output_dir', str(d / name), '--max_steps', str(steps)])
    for name, flags in (('fsdp', ['--fsdp']), ('fsdp_recompute', ['--fsdp', '--grad_checkpointing']),
                        ('fsdp_accum', ['--fsdp', '--grad_accum_steps', '2']),
                        ('ddp_accum', ['--grad_accum_steps', '2'])):
        torchrun(d, d / name, 2, '--batch_size', '4', '--max_steps', str(STEPS), *flags)
    yield d
    torch.set_num_threads(threads)


def torchrun(d, out, processes, *flags):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT}
    result = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone',  # on a free port
                             '--nproc_per_node', str(processes), os.path.join(ROOT, 'main.py'),
                             '--config', str(d / 'tiny.yaml'),
                             '--output_dir', str(out), *flags], env=env, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]


def losses(out):
    with open(os.path.join(out, 'log.jsonl')) as f:
        return [(r['step'], r['loss']) for r in map(json.loads, f) if 'loss' in r]


def assert_same_weights(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), atol=atol, rtol=0, msg=key)


@pytest.mark.parametrize('name, reference', [('fsdp', f'plain_{STEPS}'), ('fsdp_recompute', f'plain_{STEPS}'),
                                             ('fsdp_accum', 'ddp_accum')])
def test_two_sharded_processes_match_unsharded_training(runs, name, reference):
    plain, sharded = losses(runs / reference), losses(runs / name)
    assert len(sharded) == STEPS
    for (s1, l1), (s2, l2) in zip(plain, sharded):
        assert s1 == s2 and abs(l1 - l2) < 1e-5
    a, b = load_checkpoint(runs / reference / 'checkpoint-last.pth'), read_sharded(runs / name / 'checkpoint-last.dcp')
    assert b['step'] == STEPS and b['config']['model'] == a['config']['model'] and b['config']['args']['fsdp']
    assert_same_weights(a['model'], b['model'])
    assert_same_weights(a['model_ema'], b['model_ema'])


def test_sharded_checkpoint_resumes_in_one_plain_process(runs):
    """2 FSDP processes for STEPS steps, then 1 process without FSDP to 2 * STEPS: the uninterrupted plain run."""
    resumed = runs / 'resumed'
    train_main.main(['--config', str(runs / 'tiny.yaml'), '--output_dir', str(resumed), '--max_steps',
                     str(2 * STEPS), '--resume', str(runs / 'fsdp' / 'checkpoint-last.dcp')])
    full = losses(runs / 'plain')
    assert [s for s, _ in losses(resumed)] == [s for s, _ in full[STEPS:]]
    for (_, l1), (_, l2) in zip(full[STEPS:], losses(resumed)):
        assert abs(l1 - l2) < 1e-5
    a, b = load_checkpoint(runs / 'plain' / 'checkpoint-last.pth'), load_checkpoint(resumed / 'checkpoint-last.pth')
    assert_same_weights(a['model'], b['model'])
    assert_same_weights(a['model_ema'], b['model_ema'])
    assert_same_weights(a['optimizer']['state'][0], b['optimizer']['state'][0])


def test_sharded_checkpoint_resumes_at_another_world_size_and_samples(runs):
    """The 2-process save continues in 1 FSDP process; load_generator (main_sample.py, the app) reads it."""
    out = runs / 'one_sharded'
    torchrun(runs, out, 1, '--batch_size', '8', '--max_steps', str(2 * STEPS), '--fsdp',
             '--resume', str(runs / 'fsdp' / 'checkpoint-last.dcp'))
    for (_, l1), (_, l2) in zip(losses(runs / 'plain')[STEPS:], losses(out)):
        assert abs(l1 - l2) < 1e-5
    plain = load_checkpoint(runs / 'plain' / 'checkpoint-last.pth')
    model = load_generator(out / 'checkpoint-last.dcp', use_ema=True)
    assert_same_weights(plain['model_ema'], model.state_dict())
    assert model.sample(SampleSettings(steps_per_scale=2), labels=[3], seeds=[0]).codes[-1].shape == (1, 4, 4)


def test_fsdp_in_one_process_without_torchrun(runs):
    """--fsdp alone (a process group of one) trains the plain run's model and writes a sharded checkpoint."""
    out = runs / 'alone'
    train_main.main(['--config', str(runs / 'tiny.yaml'), '--output_dir', str(out), '--max_steps', str(STEPS),
                     '--fsdp', '--grad_checkpointing'])
    assert not torch.distributed.is_initialized()  # the group is gone with the run
    for (_, l1), (_, l2) in zip(losses(runs / f'plain_{STEPS}'), losses(out)):
        assert abs(l1 - l2) < 1e-5
    assert_same_weights(load_checkpoint(runs / f'plain_{STEPS}' / 'checkpoint-last.pth')['model'],
                        read_sharded(out / 'checkpoint-last.dcp')['model'])


def small_save(folder, value, step):
    model = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(model.weight, value)
    optimizer = torch.optim.AdamW(model.parameters())
    save_sharded(folder, model, optimizer, None, {'step': step})


def test_killed_sharded_save_leaves_the_previous_one(tmp_path, monkeypatch):
    folder = tmp_path / 'checkpoint-last.dcp'
    small_save(folder, 1.0, step=1)
    real_save = sharded_checkpoint.dcp.save

    def dying_save(state, checkpoint_id, **kwargs):
        real_save(state, checkpoint_id=checkpoint_id, **kwargs)
        for name in os.listdir(checkpoint_id):  # half-written shards, then the process "dies"
            with open(os.path.join(checkpoint_id, name), 'r+b') as f:
                f.truncate(10)
        raise KeyboardInterrupt

    monkeypatch.setattr(sharded_checkpoint.dcp, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        small_save(folder, 2.0, step=2)
    state = read_sharded(folder)
    assert state['step'] == 1 and torch.equal(state['model']['weight'], torch.ones(2, 2))
    monkeypatch.setattr(sharded_checkpoint.dcp, 'save', real_save)
    small_save(folder, 3.0, step=3)  # the next save replaces the partial one and removes the old one
    assert read_sharded(folder)['step'] == 3 and sorted(os.listdir(folder)) == ['latest', 'save-000002']


class Exploit:
    def __reduce__(self):
        return (os.system, ('echo pwned',))


def test_reading_a_sharded_checkpoint_unpickles_only_plain_data(tmp_path):
    folder = tmp_path / 'checkpoint-last.dcp'
    small_save(folder, 1.0, step=1)
    metadata = os.path.join(latest_save(folder), '.metadata')
    with open(metadata, 'wb') as f:
        pickle.dump(Exploit(), f)
    with pytest.raises(CheckpointError, match='refusing to unpickle posix.system'):
        read_sharded(folder)
    sharded_checkpoint.dcp.save({'value': Exploit()}, checkpoint_id=tmp_path / 'bytes')  # a non-tensor entry
    with pytest.raises(CheckpointError, match='not plain data'):
        load_state({'value': None}, tmp_path / 'bytes')
