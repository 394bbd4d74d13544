"""main.py: config validation, token cache path, exact resume, DDP equivalence, atomic saves, non-finite loss."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

import main as train_main
from conftest import write_tiny_run
from data.image_folder import ImageFolderDataset
from data.token_cache import TokenCacheDataset, autoencoder_fingerprint, create_token_cache
from evaluation.sample_quality import latest_evaluation
from models import build_generator, load_generator
from models.generator_config import GeneratorConfig
from models.sample_settings import SampleSettings
from util import checkpoint as checkpoint_io
from util.checkpoint import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """A tiny built-in dataset (8 train images per class), a random stride-8 autoencoder, a tiny config."""
    d = tmp_path_factory.mktemp('train')
    write_tiny_run(d, 'tiny.yaml', (4, 2), model=dict(random_block_size=True, random_replace=0.1),
                   args=dict(warmup_epochs=0.5, ema=0.9, clip_grad=1.0))
    return d


def run(setup, out, *flags):
    train_main.main(['--config', str(setup / 'tiny.yaml'), '--output_dir', str(out), *flags])


def losses(out):
    with open(os.path.join(out, 'log.jsonl')) as f:
        return [(r['step'], r['loss']) for r in map(json.loads, f) if 'loss' in r]


def expect_exit(capsys, setup, code, message, *flags, out='never'):
    out = setup / out
    with pytest.raises(SystemExit) as e:
        run(setup, out, *flags)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_config_errors(setup, capsys, tmp_path):
    expect_exit(capsys, setup, 2, "unknown flag --batchsize (did you mean 'batch_size'?)", '--batchsize', '4')
    expect_exit(capsys, setup, 2, 'args.batch_size must be int', '--batch_size', 'four')
    expect_exit(capsys, setup, 2, 'args.batch_size 8 is not divisible by args.grad_accum_steps 3', '--grad_accum_steps',
                '3')
    expect_exit(capsys, setup, 2, "args.optimizer must be one of adamw (the optimizers this trainer implements), got "
                "'sgd'", '--optimizer', 'sgd')
    expect_exit(capsys, setup, 2, 'args.lr must be a finite number > 0, got -1', '--lr', '-1')
    expect_exit(capsys, setup, 2, 'args.lr must be a finite number > 0, got nan', '--lr', 'nan')
    expect_exit(capsys, setup, 2, "model.scan_order must be one of ('checkerboard', 'raster', 'random'), got 'zigzag'",
                '--model.scan_order', 'zigzag')
    expect_exit(capsys, setup, 2, "unknown key 'model.llama_config.hiden_size' (did you mean 'hidden_size'?)",
                '--model.llama_config.hiden_size', '8')
    expect_exit(capsys, setup, 2, "neither an existing folder nor a built-in dataset", '--data_path', 'nowhere')
    expect_exit(capsys, setup, 2, f'autoencoder checkpoint not found: {tmp_path / "missing.pth"} '
                '(model.autoenc.checkpoint_path', '--model.autoenc.checkpoint_path', str(tmp_path / 'missing.pth'))
    with torch._inductor.config.patch({'cpp.cxx': ('no-such-c++',)}):
        expect_exit(capsys, setup, 2, '--compile on a CPU needs a C++ compiler', '--compile')
    cfg = yaml.safe_load((setup / 'tiny.yaml').read_text())
    cfg['args']['epoch'] = 3
    (tmp_path / 'bad.yaml').write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as e:
        train_main.main(['--config', str(tmp_path / 'bad.yaml'), '--output_dir', str(tmp_path / 'o')])
    assert e.value.code == 2 and "unknown key 'args.epoch' (did you mean 'epochs'?)" in capsys.readouterr().err
    assert not (tmp_path / 'o').exists()


def test_exact_resume(setup):
    full, split = setup / 'full', setup / 'split'
    run(setup, full, '--max_steps', '6')
    run(setup, split, '--max_steps', '3')
    run(setup, split, '--max_steps', '6')  # resumes from split/checkpoint-last.pth mid-epoch
    assert losses(full) == losses(split) and len(losses(full)) == 6
    a, b = load_checkpoint(full / 'checkpoint-last.pth'), load_checkpoint(split / 'checkpoint-last.pth')
    for key in a['model']:
        assert torch.equal(a['model'][key], b['model'][key]), key
    for key in a['model_ema']:
        assert torch.equal(a['model_ema'][key], b['model_ema'][key]), key
    assert a['step'] == 6 and a['epoch'] == 1 and a['batch_in_epoch'] == 1  # 5 steps per epoch
    assert yaml.safe_load((full / 'config.yaml').read_text())['model']['num_classes'] == 10
    for use_ema in (False, True):  # the checkpoint describes itself: loads without the config files
        model = load_generator(full / 'checkpoint-last.pth', use_ema=use_ema)
        weights = a['model_ema'] if use_ema else a['model']
        assert torch.equal(model.lm_head.weight, weights['lm_head.weight'])
    assert model.sample(SampleSettings(steps_per_scale=2), labels=[3], seeds=[0]).codes[-1].shape == (1, 4, 4)


def test_training_time_adds_up_over_a_resume(setup):
    """The checkpoint's train_seconds sums every session; from a checkpoint that lacks it, it stays unknown."""
    out = setup / 'timed'
    run(setup, out, '--max_steps', '2')
    path = out / 'checkpoint-last.pth'
    state = load_checkpoint(path)
    assert 0 < state['train_seconds'] < 600
    torch.save({**state, 'train_seconds': 1000.0}, path)  # as if the first session had trained for 1,000 s
    run(setup, out, '--max_steps', '3')
    assert 1000 < load_checkpoint(path)['train_seconds'] < 1600
    torch.save({k: v for k, v in load_checkpoint(path).items() if k != 'train_seconds'}, path)  # an older checkpoint
    run(setup, out, '--max_steps', '4')
    assert load_checkpoint(path)['train_seconds'] is None


def test_sessions_record_their_machine_and_precision(setup):
    """Each session of a run records where and how it trained; a checkpoint from before that record keeps its
    earlier sessions as unknown."""
    out = setup / 'sessions'
    run(setup, out, '--max_steps', '2')
    run(setup, out, '--max_steps', '3')
    path = out / 'checkpoint-last.pth'
    sessions = load_checkpoint(path)['train_sessions']
    assert [s['first_step'] for s in sessions] == [0, 2]
    assert all(s['precision'] == 'fp32' and s['processes'] == 1 and 'torch thread' in s['machine'] for s in sessions)
    torch.save({k: v for k, v in load_checkpoint(path).items() if k != 'train_sessions'}, path)
    run(setup, out, '--max_steps', '4')
    assert [s['machine'] is None for s in load_checkpoint(path)['train_sessions']] == [True, False]


def folder_state(folder):
    """{file: bytes} of everything under folder."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob('*')) if p.is_file()}


def test_resume_into_another_architecture_is_one_line(setup, capsys):
    out = setup / 'arch'
    run(setup, out, '--max_steps', '2')
    before = folder_state(out)
    for flags, setting in ((['--model.llama_config.hidden_size', '64'], 'model.llama_config.hidden_size = 32'),
                           (['--model.scan_order', 'raster'], "model.scan_order = 'checkerboard'")):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            run(setup, out, '--max_steps', '4', *flags)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1, err
        assert setting in err[0] and '--output_dir' in err[0], err[0]
        assert folder_state(out) == before  # nothing written
    # a checkpoint without its config (a published-style file) is caught at the first mismatched tensor
    ck = load_checkpoint(out / 'checkpoint-last.pth')
    del ck['config']
    torch.save(ck, out / 'checkpoint-last.pth')
    before = folder_state(out)
    with pytest.raises(SystemExit) as e:
        run(setup, out, '--max_steps', '4', '--model.llama_config.hidden_size', '48')
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and 'shape mismatch at' in err[0] and '--output_dir' in err[0], err
    assert folder_state(out) == before


def test_compiled_training_matches_eager(setup):
    eager, compiled = setup / 'eager', setup / 'compiled'
    run(setup, eager, '--max_steps', '3')
    torch._dynamo.reset()
    run(setup, compiled, '--max_steps', '3', '--compile')
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] > 0  # the compiled path ran
    assert len(losses(compiled)) == 3
    for (s1, l1), (s2, l2) in zip(losses(eager), losses(compiled)):
        assert s1 == s2 and abs(l1 - l2) < 1e-4
    a, b = load_checkpoint(eager / 'checkpoint-last.pth'), load_checkpoint(compiled / 'checkpoint-last.pth')
    assert a['model'].keys() == b['model'].keys()  # compiling adds no state


def test_two_gloo_processes_match_one(setup):
    one, two = setup / 'one', setup / 'two'
    run(setup, one, '--max_steps', '3', '--ema', '0')
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT}
    subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
                    os.path.join(ROOT, 'main.py'), '--config', str(setup / 'tiny.yaml'), '--output_dir', str(two),
                    '--batch_size', '4', '--max_steps', '3', '--ema', '0'], check=True, env=env, cwd=ROOT,
                   capture_output=True)
    for (s1, l1), (s2, l2) in zip(losses(one), losses(two)):
        assert s1 == s2 and abs(l1 - l2) < 1e-5
    a, b = load_checkpoint(one / 'checkpoint-last.pth'), load_checkpoint(two / 'checkpoint-last.pth')
    for key in a['model']:
        torch.testing.assert_close(a['model'][key], b['model'][key], atol=1e-5, rtol=0)


def test_interrupted_save_leaves_previous_checkpoint(setup, monkeypatch):
    out = setup / 'atomic'
    run(setup, out, '--max_steps', '2')
    before = (out / 'checkpoint-last.pth').read_bytes()
    real_save = torch.save

    def dying_save(obj, f):
        real_save(obj, f)
        f.truncate(100)  # half-written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io.torch, 'save', dying_save)
    with pytest.raises(KeyboardInterrupt):
        run(setup, out, '--max_steps', '4')
    assert (out / 'checkpoint-last.pth').read_bytes() == before
    assert load_checkpoint(out / 'checkpoint-last.pth')['step'] == 2
    assert [p for p in os.listdir(out) if p.endswith('.tmp')] == []


def test_non_finite_loss_stops_cleanly(setup, capsys):
    out = setup / 'nan'
    run(setup, out, '--max_steps', '2')
    ck = load_checkpoint(out / 'checkpoint-last.pth')
    ck['model']['lm_head.bias'][0] = float('nan')
    torch.save(ck, out / 'checkpoint-last.pth')
    before = (out / 'checkpoint-last.pth').read_bytes()
    with pytest.raises(SystemExit) as e:
        run(setup, out, '--max_steps', '4')
    assert e.value.code == 1
    assert 'non-finite loss at step 3 (this rank: nan)' in capsys.readouterr().err
    assert (out / 'checkpoint-last.pth').read_bytes() == before


def test_cache_and_images_give_the_same_loss(setup):
    cfg = yaml.safe_load((setup / 'tiny.yaml').read_text())
    model = build_generator(GeneratorConfig.from_dict({**cfg['model'], 'num_classes': 10})).train()
    views = ImageFolderDataset(str(setup / 'shapes'), 32, all_views=True)
    cache = setup / 'cache'
    create_token_cache(str(cache), views, model.autoenc, model.sides, 32, model.vocab_size, 'cpu', batch_size=16)
    cached = TokenCacheDataset(str(cache), autoencoder_fingerprint(model.autoenc), model.sides, 32, seed=0)
    images = ImageFolderDataset(str(setup / 'shapes'), 32, seed=0)
    for dataset in (cached, images):
        dataset.set_epoch(2)
    idx = [0, 5, 17, 33]
    codes = [torch.stack([cached[i][0][s] for i in idx]) for s in range(len(model.sides))]
    labels = torch.tensor([cached[i][1] for i in idx])
    pixels = torch.stack([images[i][0] for i in idx])
    assert torch.equal(labels, torch.tensor([images[i][1] for i in idx]))
    loss_cache, _ = model(codes, labels, torch.Generator().manual_seed(3))
    loss_image, _ = model(pixels, labels, torch.Generator().manual_seed(3))
    assert loss_cache.item() == pytest.approx(loss_image.item(), abs=1e-6)


def test_trains_from_cache_via_cli(setup):
    out = setup / 'cached_run'
    run(setup, out, '--create_cache', '--use_cache', '--max_steps', '2')
    manifest = json.loads((out / 'token_cache' / 'manifest.json').read_text())
    assert manifest['complete'] and manifest['sides'] == [1, 2, 4] and manifest['num_images'] == 40
    assert np.load(out / 'token_cache' / 'codes_4.npy').shape == (40, 10, 4, 4)
    assert len(losses(out)) == 2


def test_latest_evaluation_is_read_back_from_the_log(tmp_path):
    log = tmp_path / 'log.jsonl'
    assert latest_evaluation(str(log)) is None  # no log yet
    records = [{'step': 10, 'loss': 3.0}, {'step': 20, 'eval/class_consistency': 0.5, 'epoch': 1},
               {'step': 40, 'eval/class_consistency': 0.974, 'eval/frechet': 4.6096, 'epoch': 2},
               {'step': 50, 'loss': 2.0}]
    log.write_text(''.join(json.dumps(r) + '\n' for r in records[:1]))
    assert latest_evaluation(str(log)) is None  # training records only
    log.write_text(''.join(json.dumps(r) + '\n' for r in records))
    assert latest_evaluation(str(log)) == (f'latest evaluation (epoch 2, step 40): class_consistency 0.974, '
                                           f'frechet 4.61 (all records: {log})')
