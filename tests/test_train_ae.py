"""Autoencoder training: requantization from a LlamaGen-layout checkpoint, statistics init, resume, dead-code
re-initialization, full training, evaluation, config errors, a full disk."""
import argparse
import errno
import json
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from models.autoencoder import VQAutoencoder, load_autoencoder
from models.autoencoder_config import AutoencoderConfig
from train_ae_codebook import evaluate, train
from train_ae_codebook.build import build_datasets
from train_ae_codebook.codebook import (MomentStats, codebook_table, init_codebook_from_stats, live_codes,
                                        reinit_dead_codes, rows_per_scale, update_usage)
from train_ae_codebook.metrics import evaluate_pyramid
from util.checkpoint import load_checkpoint
from util.config import load_config

DDCONFIG = dict(ch=32, ch_mult=[1, 2], z_channels=32, num_res_blocks=1)  # stride 2
SIZE = 8  # px: pyramid sides 1, 2, 4
N_TRAIN, N_VAL = 16, 2  # images per class, 2 classes


def params(n_embed=256, embed_dim=4, normalize=True, levels=1):
    return dict(embed_dim=embed_dim, n_embed=n_embed, normalize=normalize, requant_pyramid_levels=levels,
                resolution=SIZE, ddconfig=DDCONFIG)


pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    """A tiny ImageFolder: two classes of coloured squares on random backgrounds, 8 px."""
    root = tmp_path_factory.mktemp('data')
    rng = np.random.default_rng(0)
    for split, n in (('train', N_TRAIN), ('val', N_VAL)):
        for c, name in enumerate(('red', 'blue')):
            os.makedirs(root / split / name)
            for i in range(n):
                image = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
                y, x = rng.integers(0, 4, 2)
                image[y:y + 4, x:x + 4, c * 2] = 255
                Image.fromarray(image).save(root / split / name / f'{i}.png')
    return str(root)


@pytest.fixture(scope='module')
def llamagen_ckpt(tmp_path_factory):
    """A tiny random autoencoder saved in LlamaGen's layout: {'model': sd, 'args'} with a raw codebook of
    another size and a quantize.codebook_used buffer."""
    torch.manual_seed(0)
    source = VQAutoencoder(AutoencoderConfig(n_embed=64, embed_dim=4, normalize=False, resolution=SIZE, **DDCONFIG))
    sd = {k: v for k, v in source.state_dict().items() if k not in ('quantize.initialized', 'cluster_usage_train')}
    sd['quantize.codebook_used'] = torch.zeros(1000)
    path = tmp_path_factory.mktemp('llamagen') / 'vq_ds16_c2i.pt'
    torch.save({'model': sd, 'args': argparse.Namespace(codebook_size=64)}, path)
    return str(path), sd


def write_config(tmp_path, model, args, name='config.yaml'):
    path = tmp_path / name
    path.write_text(yaml.safe_dump({'model': model, 'args': args}))
    return str(path)


def requant_model(ckpt, **kw):
    init = dict(checkpoint=ckpt, freeze_encoder=True, freeze_decoder=True, freeze_quant_convs=True)
    return dict(target='cbgen.autoencoder.VQModel', init=init, params=params(**kw))


def base_args(data_dir, out, **kw):
    return {**dict(data_path=data_dir, output_dir=str(out), batch_size=8, num_workers=0, lr=1e-4, log_every=1,
                   save_every=100, val_every=0, val_images=4), **kw}


def run(config_path, *flags):
    train.main(['--config', config_path, *flags])


def read_log(out):
    with open(os.path.join(out, 'log.jsonl')) as f:
        return [json.loads(line) for line in f]


def encode_views(autoencoder, dataset, side):
    """Latents of every item's epoch-0 view at one pyramid side, (N, E, side, side)."""
    dataset.set_epoch(0)
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    with torch.no_grad():
        return autoencoder.encode(autoencoder.pyramid_image(images, side))


def test_requantization_initializes_from_statistics_and_loads(tmp_path, data_dir, llamagen_ckpt):
    ckpt, source_sd = llamagen_ckpt
    out = tmp_path / 'out'
    # every step codes all scales; 4 gathering steps of 8 = one pass over the 32 images
    config = write_config(tmp_path, requant_model(ckpt, levels=-1),
                          base_args(data_dir, out, steps=6, quantize_iter_start=4, p_train_random_scale=0.0))
    run(config)
    state = torch.load(out / 'checkpoint-last.pth', weights_only=True)
    assert state['step'] == 6
    sd = state['state_dict']
    for key, value in source_sd.items():  # frozen parts unchanged, codebook new
        if not key.startswith('quantize.'):
            assert torch.equal(sd[key], value), key
    assert sd['quantize.embedding.parametrizations.weight.original'].shape == (256, 4)

    # the gathered statistics are those of the encoder outputs of the views seen
    ae = load_autoencoder(out / 'autoencoder_config.yaml', out / 'checkpoint-last.pth')
    stats = MomentStats([1, 2, 4], dim=4)
    stats.load_state_dict(state['codebook_stats'])
    dataset = build_datasets(load_config(['--config', config], train.SCHEMA)['args'], SIZE, 0)[0]
    for side in stats.sides:
        z = encode_views(ae, dataset, side).transpose(0, 1).flatten(1).double()  # (E, N)
        mean, std = stats.mean_std(side)
        np.testing.assert_allclose(mean, z.mean(1), atol=1e-5)
        np.testing.assert_allclose(std, z.std(1, unbiased=False), atol=1e-5)

    # each scale's block of codebook rows has that scale's mean and std, within sampling error (2 steps of
    # lr 1e-4 move rows by ~2e-4)
    table = codebook_table(ae).double()
    assert stats.count.tolist() == [32, 32 * 4, 32 * 16]  # latents seen: 32 images x (1, 4, 16) positions
    rows = rows_per_scale(stats.count.tolist(), 256)
    assert rows == [12, 48, 196]  # 256 * 32 / 672 = 12.2, 256 * 128 / 672 = 48.8, floored; the rest to 4x4
    start = 0
    for side, n in zip(stats.sides, rows):
        block = table[start:start + n]
        start += n
        mean, std = stats.mean_std(side)
        assert ((block.mean(0) - mean).abs() < 4 * std / n ** 0.5 + 1e-3).all(), side
        if n >= 30:
            assert ((block.std(0) / std - 1).abs() < 4 / (2 * n) ** 0.5 + 0.05).all(), side
    assert bool(ae.quantize.initialized) and ae.normalize and ae.n_embed == 256
    with torch.no_grad():
        codes = ae.pyramid_codes(torch.zeros(2, 3, SIZE, SIZE), [1, 2, 4])
    assert [c.shape for c in codes] == [(2, 1, 1), (2, 2, 2), (2, 4, 4)]
    records = [r for r in read_log(out) if 'loss' in r]
    assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 6]
    assert records[-1]['vq'] > 0 and 0 < records[-1]['usage'] <= 1 and records[-1]['recon'] == 0


def test_resume_restores_step_and_codebook_and_continues_exactly(tmp_path, data_dir, llamagen_ckpt):
    ckpt = llamagen_ckpt[0]
    args = base_args(data_dir, tmp_path / 'straight', steps=7, quantize_iter_start=2, reinit_every=2)
    straight = write_config(tmp_path, requant_model(ckpt), args, 'straight.yaml')
    run(straight)  # the published schedule: one random scale per step
    expected = torch.load(tmp_path / 'straight' / 'checkpoint-last.pth', weights_only=True)

    args['output_dir'] = str(tmp_path / 'split')
    split = write_config(tmp_path, requant_model(ckpt), args, 'split.yaml')
    run(split, '--steps', '3')  # an epoch holds 4 steps: resume mid-epoch, after the codebook is drawn
    first = torch.load(tmp_path / 'split' / 'checkpoint-last.pth', weights_only=True)
    trainer = train.Trainer(load_config(['--config', split], train.SCHEMA))  # finds checkpoint-last.pth
    assert trainer.step == 3
    assert torch.equal(codebook_table(trainer.autoencoder),
                       first['state_dict']['quantize.embedding.parametrizations.weight.original'])
    trainer.run()
    resumed = torch.load(tmp_path / 'split' / 'checkpoint-last.pth', weights_only=True)
    assert resumed['step'] == 7
    for key, value in expected['state_dict'].items():
        assert torch.equal(resumed['state_dict'][key], value), key
    assert [r['step'] for r in read_log(tmp_path / 'split') if 'loss' in r] == list(range(1, 8))


class FillsUp:
    """A file whose device has room for `room` more bytes; a longer write fails as on a full disk."""

    def __init__(self, f, room):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def test_a_full_disk_while_saving_is_one_line(tmp_path, data_dir, llamagen_ckpt, capsys, monkeypatch):
    out = tmp_path / 'out'
    config = write_config(tmp_path, requant_model(llamagen_ckpt[0]),
                          base_args(data_dir, out, steps=2, quantize_iter_start=1))
    run(config)
    path = out / 'checkpoint-last.pth'
    before = path.read_bytes()
    real_save = torch.save
    monkeypatch.setattr(torch, 'save', lambda obj, f: real_save(obj, FillsUp(f, 1000)))
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        run(config, '--steps', '4')
    err = capsys.readouterr().err
    assert e.value.code == 1 and 'Traceback' not in err
    assert [line for line in err.splitlines() if line.startswith('error:')] == [
        f'error: could not write {path}: no space left on device in {out} (free space or choose another output_dir)']
    assert path.read_bytes() == before and load_checkpoint(path)['step'] == 2
    assert not [p for p in os.listdir(out) if p.endswith('.tmp')]


def test_dead_codes_are_redrawn_from_live_codes():
    torch.manual_seed(0)
    ae = VQAutoencoder(AutoencoderConfig(n_embed=16, embed_dim=4, normalize=True, resolution=SIZE, **DDCONFIG))
    data = torch.nn.functional.normalize(torch.tensor([1.0, 1.0, 0.0, 0.0]) + 0.1 * torch.randn(64, 4), dim=1)
    table = codebook_table(ae)
    with torch.no_grad():  # 8 codes near the data, 8 at the antipode: far from every latent
        table[:8] = data[:8]
        table[8:] = -data[:8]
    codes = ae.quantize.codes(data.reshape(64, 4, 1, 1))
    usage = torch.zeros(16)
    update_usage(usage, torch.bincount(codes.flatten(), minlength=16).float(), alpha=0.01)
    live = live_codes(usage, threshold=1e-4)
    assert not live[8:].any() and live.sum() >= 2
    before = ae.codebook().detach().clone()
    assert reinit_dead_codes(ae, live, torch.Generator().manual_seed(0)) == int((~live).sum())
    after = ae.codebook().detach()
    assert torch.equal(after[live], before[live])
    # redrawn codes come from the live codes' distribution: now close to the data, not at its antipode
    assert (after[~live] @ data.mean(0) > 0.5).all()
    assert reinit_dead_codes(ae, torch.ones(16, dtype=torch.bool), torch.Generator()) == 0


def test_dead_code_reinit_fires_during_training(tmp_path, data_dir, llamagen_ckpt):
    out = tmp_path / 'out'
    config = write_config(tmp_path, requant_model(llamagen_ckpt[0]),
                          base_args(data_dir, out, steps=5, quantize_iter_start=2, reinit_every=1))
    run(config)  # 256 codes, at most 8 * 16 latents a step: most codes stay unused
    reinit = [r['reinit'] for r in read_log(out) if 'reinit' in r]
    assert sum(reinit) > 0 and reinit[:2] == [0, 0]


def test_moment_stats_and_init():
    stats = MomentStats([1, 2], dim=3)
    a, b = torch.randn(5, 3, 1, 1) * 2 + 1, torch.randn(4, 3, 2, 2)
    stats.update(1, a[:2])
    stats.update(1, a[2:])
    stats.update(2, b)
    mean, std = stats.mean_std(1)
    flat = a.transpose(0, 1).flatten(1).double()
    np.testing.assert_allclose(mean, flat.mean(1), atol=1e-6)
    np.testing.assert_allclose(std, flat.std(1, unbiased=False), atol=1e-6)
    assert rows_per_scale([5, 16], 10) == [2, 8] and rows_per_scale([5, 0], 10) == [10, 0]
    ae = VQAutoencoder(AutoencoderConfig(n_embed=10, embed_dim=3, normalize=False, resolution=SIZE, **DDCONFIG))
    assert init_codebook_from_stats(ae, stats, torch.Generator().manual_seed(0)) == [2, 8]
    assert bool(ae.quantize.initialized)


def test_full_training_loss_decreases_and_evaluates(tmp_path, data_dir, capsys):
    out = tmp_path / 'out'
    model = dict(params=params(n_embed=32, levels=-1))
    config = write_config(tmp_path, model, base_args(
        data_dir, out, steps=24, quantize_iter_start=8, p_train_random_scale=0.0, lr=2e-3, beta=0.25,
        log_every=4, val_every=12, min_lr_ratio=0.1))
    run(config)
    records = [r for r in read_log(out) if 'loss' in r]
    assert records[-1]['recon'] < 0.7 * records[0]['recon']
    assert records[-1]['vq'] > 0 and records[0]['vq'] == 0  # quantized after the gathering steps
    assert os.path.isfile(out / 'pictures' / 'step0000012.png') and os.path.isfile(out / 'pictures' / 'final.png')
    assert 'psnr_dB' in capsys.readouterr().out

    evaluate.main(['--checkpoint', str(out / 'checkpoint-last.pth'), '--data_path', data_dir,
                   '--num_images', '4', '--num_workers', '0'])
    printed = capsys.readouterr().out
    assert ' 4x4 ' in printed and ' 1x1 ' in printed
    picture = Image.open(out / 'eval_recon.png')
    assert picture.size[1] > 6 * 128  # 3 scales x (originals, reconstructions) rows
    metrics = json.loads((out / 'eval_metrics.json').read_text())
    assert 5 < metrics['4']['psnr'] < 60 and 0 < metrics['all']['usage'] <= 1


def test_rfid_is_the_frechet_distance_of_original_and_reconstruction_features():
    """A feature function that maps image i of a batch to row i of a table, plus a shift c unless the image is
    flat: the originals are flat colours and the reconstructions are not, so the two sets of features share
    their covariance and differ by c in the mean, and rFID = |c|^2 = 25 at every scale."""
    torch.manual_seed(0)
    ae = VQAutoencoder(AutoencoderConfig(n_embed=16, embed_dim=4, normalize=True, resolution=SIZE, **DDCONFIG)).eval()
    ae.quantize.initialized.fill_(True)
    rows, shift = np.array([[0., 0.], [1., 0.], [0., 2.], [3., 1.]]), np.array([3., 4.])

    def features(images):  # uint8 (B, H, W, 3)
        flat = (images == images[:, :1, :1]).all((1, 2, 3))
        return {'pool': rows[:len(images)] + (~flat)[:, None] * shift}

    gen = torch.Generator().manual_seed(1)  # level k + 0.5 in [-1, 1]: exactly k in uint8 at every size
    batches = [((torch.randint(0, 255, (4, 3, 1, 1), generator=gen) + 0.5) / 127.5 - 1).expand(-1, -1, SIZE, SIZE)
               for _ in range(2)]
    results = evaluate_pyramid(ae, batches, [1, 2, 4], inception=features)
    assert [results[s]['rfid'] for s in (1, 2, 4)] == pytest.approx([25.0] * 3, abs=1e-6)


@pytest.mark.parametrize('model, args, flags, message', [
    ({}, {'stepz': 3}, [], "did you mean 'steps'"),
    ({'paramz': {}}, {}, [], "did you mean 'params'"),
    ({}, {}, ['--model.params.n_embedd', '8'], "unknown key 'model.params.n_embedd'"),
    ({}, {}, ['--model.params.p_train_random_scale', '0.5'], 'training settings go in args'),
    ({}, {'quantize_iter_start': 10, 'steps': 10}, [], 'must be below args.steps'),
    ({}, {'data_path': '/nonexistent/folder'}, [], 'neither an existing folder nor a built-in'),
    ({'init': {'checkpoint': '/nonexistent.pt'}}, {}, [], 'checkpoint not found'),
    ({'init': {'freeze_encoder': True}}, {}, [], 'needs model.init.checkpoint'),
    ({}, {'p_train_random_scale': 2}, [], 'must be in [0, 1]'),
    ({}, {'scale_ratio': 1}, [], 'scale_ratio must be a finite number > 1'),
    ({'init': {'checkpoint': 3}}, {}, [], 'model.init.checkpoint must be str'),
])
def test_config_errors_exit_2(tmp_path, data_dir, capsys, model, args, flags, message):
    config = {'params': params(), **model}
    path = write_config(tmp_path, config, {**base_args(data_dir, tmp_path / 'out', steps=5,
                                                     quantize_iter_start=2), **args})
    with pytest.raises(SystemExit) as exit_info:
        run(path, *flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_evaluate_bad_input_exits_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(['--checkpoint', str(tmp_path / 'missing.pth')])
    assert exit_info.value.code == 2
    assert 'not found' in capsys.readouterr().err


def test_evaluate_keeps_the_traceback_of_a_bug(monkeypatch):
    def bug(*args, **kwargs):
        raise ValueError('a bug')

    monkeypatch.setattr(evaluate, 'load_autoencoder', bug)
    with pytest.raises(ValueError, match='a bug'):
        evaluate.main(['--checkpoint', 'any.pth'])


def test_resume_into_another_architecture_is_one_line(tmp_path, data_dir, capsys):
    out = tmp_path / 'out'
    path = write_config(tmp_path, {'params': params(n_embed=32, levels=-1)},
                        base_args(data_dir, out, steps=3, quantize_iter_start=2))
    run(path)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(path, '--model.params.n_embed', '64', '--steps', '5')
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1, err
    assert 'model.params.n_embed = 32' in err[0] and '--output_dir' in err[0], err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
