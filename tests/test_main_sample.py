"""main_sample.py end to end on tiny models: the showcase against the published sampler's codes, the
evaluation batch (batch sizes, two gloo processes, resume from shards), FLOPs, and one-line usage errors."""
import glob
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import main_sample
from models import build_generator
from models.autoencoder import read_autoencoder_config
from models.generator_config import GeneratorConfig
from util import precision
from util.images import save_grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EVAL = ['--steps_per_scale', '2', '--cfg', '1.5', '--cfg_start_step', '2', '--num_samples', '4', '--device', 'cpu']


@pytest.fixture
def checkpoint(fixtures_dir, tmp_path, monkeypatch):
    """The tiny published-format model; the test runs in tmp_path, where the outputs land."""
    monkeypatch.chdir(tmp_path)
    return f'{fixtures_dir}/checkerboard-tiny-2x/checkpoint-last.pth'


@pytest.fixture(scope='module')
def unconditional(fixtures_dir, tmp_path_factory):
    """A random-weight unconditional project checkpoint (32 px: scales 1, 2), config inside it."""
    with open(f'{fixtures_dir}/checkerboard-tiny-2x/config.yaml') as f:
        model_cfg = {**yaml.safe_load(f)['model'], 'img_size': 32, 'class_cond': False, 'num_classes': 0}
    ae_config = read_autoencoder_config(f'{fixtures_dir}/autoenc/autoencoder_config.yaml')
    model = build_generator(GeneratorConfig.from_dict(model_cfg), ae_config, load_autoencoder_checkpoint=False)
    path = tmp_path_factory.mktemp('unconditional') / 'checkpoint.pth'
    torch.save({'model': model.state_dict(), 'config': {'model': model_cfg},
                'autoenc_config': ae_config.to_published()}, path)
    return str(path)


def image_size(path):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        return image.size, getattr(image, 'n_frames', 1)


def test_showcase_matches_published_codes_and_writes_figures(checkpoint, fixtures_dir, capsys):
    main_sample.main(['--checkpoint', checkpoint, '--temperature', '0', '--cfg', '1.5', '--cfg_start_step', '2',
                      '--steps_per_scale', '2', '--labels', '3', '7', '--output_dir', 'out'])
    expected = np.load(f'{fixtures_dir}/checkerboard-tiny-2x/expected.npz')
    codes = np.load('out/codes.npz')
    for side in expected['scale_sizes']:
        assert np.array_equal(codes[f'codes_{side}'], expected[f'expected/sample_codes_{side}']), side
    assert codes['labels'].tolist() == [3, 7] and codes['seeds'].tolist() == [0, 1]
    assert '7 sequential steps' in capsys.readouterr().out  # 1 + 2 + 2 + 2
    assert image_size('out/samples_grid.png')[0] == (2 * 128 + 3 * 2, 128 + 2 * 2)
    for i in range(2):
        assert image_size(f'out/sample_{i:04d}.png') == ((128, 128), 1)
        (width, height), _ = image_size(f'out/sample_{i:04d}_maps.png')
        assert width > 400 and height > 400
    assert image_size('out/sample_0000_forming.gif')[1] == 7  # one frame per step


def test_small_samples_are_enlarged_in_the_grid(tmp_path):
    images = torch.rand(3, 3, 16, 16) * 2 - 1  # (B, 3, H, W) in [-1, 1]
    save_grid(images, str(tmp_path / 'grid.png'), nrow=3)
    grid = np.asarray(Image.open(tmp_path / 'grid.png'))
    assert grid.shape == (64 + 2 * 2, 3 * 64 + 4 * 2, 3)  # 4x enlarged cells, 2-px padding
    first = grid[2:66, 2:66].astype(float)  # (64, 64, 3)
    expected = ((images[0].permute(1, 2, 0) + 1) * 127.5).numpy()
    assert np.abs(first[::4, ::4] - expected).max() <= 1 and (first[::4, ::4] == first[3::4, 3::4]).all()


def test_unconditional_model_and_flops(unconditional, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main_sample.main(['--checkpoint', unconditional, '--num_images', '2', '--output_dir', 'u'])
    codes = np.load('u/codes.npz')
    assert sorted(codes.files) == ['codes_1', 'codes_2', 'seeds'] and codes['codes_2'].shape == (2, 2, 2)
    main_sample.main(['--checkpoint', unconditional, '--num_samples', '2', '--output_npz', 'u.npz'])
    assert np.load('u.npz').files == ['arr_0']
    main_sample.main(['--checkpoint', unconditional, '--flops'])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    with_decoding, without = (float(g) for g in re.findall(r'(\S+) GFLOP', line))
    assert with_decoding > without > 0


def test_evaluation_batch_same_for_batch_sizes_and_processes(checkpoint, one_thread):
    for batch in (1, 3):
        main_sample.main(['--checkpoint', checkpoint, *EVAL, '--batch_size', str(batch),
                          '--output_npz', f'b{batch}.npz'])
    torchrun = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2']
    subprocess.run([*torchrun, os.path.join(REPO, 'main_sample.py'), '--checkpoint', checkpoint, *EVAL,
                    '--batch_size', '2', '--output_npz', 'two.npz'],
                   env={**os.environ, 'OMP_NUM_THREADS': '1'}, check=True, capture_output=True, timeout=300)
    b1, b3, two = (np.load(f) for f in ('b1.npz', 'b3.npz', 'two.npz'))
    assert b1['arr_0'].shape == (4, 128, 128, 3) and b1['arr_0'].dtype == np.uint8
    assert b1['labels'].tolist() == [0, 2, 5, 7]  # i * 10 // 4
    assert len({image.tobytes() for image in b1['arr_0']}) == 4
    for other in (b3, two):
        assert np.array_equal(b1['arr_0'], other['arr_0']) and np.array_equal(b1['labels'], other['labels'])
    assert sorted(np.load(p)['indices'].tolist() for p in glob.glob('two.npz.shards/shard_*.npz')) == [[0, 2], [1, 3]]


def test_evaluation_batch_resumes_from_shards(checkpoint, one_thread, capsys):
    args = ['--checkpoint', checkpoint, *EVAL, '--batch_size', '1', '--output_npz', 'r.npz']
    main_sample.main(args)
    first = np.load('r.npz')['arr_0']
    shards = sorted(glob.glob('r.npz.shards/shard_*.npz'))
    assert len(shards) == 4
    mtimes = {path: os.stat(path).st_mtime_ns for path in shards}
    os.remove(shards[1])
    capsys.readouterr()
    main_sample.main(args)
    assert '3 of 4 samples already' in capsys.readouterr().out
    assert np.load(shards[1])['indices'].tolist() == [1]
    assert all(os.stat(path).st_mtime_ns == mtimes[path] for path in shards if path != shards[1])
    assert np.array_equal(np.load('r.npz')['arr_0'], first)
    with pytest.raises(SystemExit) as exit_info:
        main_sample.main([*args, '--temperature', '0.5'])
    assert exit_info.value.code == 2 and 'other settings' in capsys.readouterr().err


BAD_INPUTS = [  # argv, what the line must name
    (['--checkpoint', 'missing.pth'], ['checkpoint not found', 'missing.pth']),
    (['--labels', '3', '10'], ['--labels', '[10]', 'out of range']),
    (['--labels', '-1'], ['--labels', '-1']),
    (['--steps_per_scale', '0'], ['--steps_per_scale', 'got 0']),
    (['--temperature', '-1'], ['--temperature', '-1']),
    (['--cfg', 'nan'], ['--cfg', 'nan']),
    (['--top_p', '0'], ['--top_p', 'got 0']),
    (['--top_k', 'two'], ['--top_k', "'two'"]),
    (['--seed', '-5'], ['--seed', '-5']),
    (['--num_samples', '0', '--output_npz', 'x.npz'], ['--num_samples', 'got 0']),
    (['--num_samples', '4'], ['--num_samples', '--output_npz']),
    (['--num_samples', '4', '--output_npz', 'x.npz', '--labels', '1'], ['--labels', 'do not apply to --num_samples']),
    (['--labels', '1', '--random_classes'], ['--random_classes', '--labels']),
    (['--precision', 'fp8'], ['--precision', "'fp8'"]),
    (['--precision', 'tf32', '--device', 'cpu'], ['--precision tf32', 'GPU setting']),
    (['--checkpoint', 'UNCONDITIONAL', '--labels', '1'], ['unconditional', '--labels']),
]


@pytest.mark.parametrize('argv, names', BAD_INPUTS, ids=[' '.join(argv) for argv, _ in BAD_INPUTS])
def test_bad_input_is_one_line_naming_it_and_exit_2(argv, names, checkpoint, request, capsys):
    """Exit status 2 and one line on stderr that names the flag and the bad value (or the clash)."""
    argv = [request.getfixturevalue('unconditional') if a == 'UNCONDITIONAL' else a for a in argv]
    if argv[0] != '--checkpoint':
        argv = ['--checkpoint', checkpoint, *argv]
    with pytest.raises(SystemExit) as exit_info:
        main_sample.main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err.startswith('error: ') and err.count('\n') == 1, err
    assert all(name in err for name in names), err


@pytest.mark.parametrize('units, expected', [(False, 'fp32'), (True, 'bf16')])
def test_precision_auto_is_bf16_only_where_the_cpu_multiplies_bf16(checkpoint, monkeypatch, capsys, units, expected):
    monkeypatch.setattr(precision, 'cpu_has_bf16_units', lambda: units)
    main_sample.main(['--checkpoint', checkpoint, '--labels', '3', '--steps_per_scale', '1', '--precision', 'auto',
                      '--device', 'cpu', '--output_dir', 'out'])
    assert f'4 serial steps, {expected} (--precision auto)' in capsys.readouterr().out
    assert image_size('out/samples_grid.png')[1] == 1


def test_per_scale_schedule_and_bad_schedules(checkpoint, tmp_path, capsys):
    main_sample.main(['--checkpoint', checkpoint, '--labels', '3', '--steps_per_scale', '1,2,4,8',
                      '--output_dir', str(tmp_path / 'out')])
    out = capsys.readouterr().out
    assert 'schedule 1,2,4,8 over scales [1, 2, 4, 8]: 15 serial steps' in out and '15 sequential steps' in out
    for schedule, message in (('1,2,4', 'has 3 entries but the model has 4 scales'),
                              ('1,5,4,8', '5 steps for the 2x2 scale'), ('0', 'steps must be >= 1'),
                              ('two', 'one per scale')):
        with pytest.raises(SystemExit) as e:
            main_sample.main(['--checkpoint', checkpoint, '--steps_per_scale', schedule,
                              '--output_dir', str(tmp_path / 'bad')])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and message in err[0], err
        assert not (tmp_path / 'bad').exists()
