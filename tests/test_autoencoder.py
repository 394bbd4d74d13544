"""VQ autoencoder: parity with the published fixtures, any config of the format, checkpoint layouts, errors."""
import argparse
import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from conftest import DEVICE
from models.autoencoder import VQAutoencoder, load_autoencoder
from models.autoencoder_config import AutoencoderConfig
from util.config import ConfigError
from util.checkpoint import CheckpointError


@pytest.fixture(scope='module')
def fixture_ae(fixtures_dir):
    return load_autoencoder(f'{fixtures_dir}/autoenc/autoencoder_config.yaml', f'{fixtures_dir}/autoenc/checkpoint.pth')


@pytest.mark.parametrize('model', ['checkerboard-tiny-2x', 'checkerboard-tiny-4x'])
def test_matches_published_outputs(fixture_ae, fixtures_dir, model):
    expected = np.load(f'{fixtures_dir}/{model}/expected.npz')
    ae = copy.deepcopy(fixture_ae).to(DEVICE)
    images = torch.from_numpy(expected['inputs/images']).to(DEVICE)
    sides = [int(s) for s in expected['scale_sizes']]
    with torch.no_grad():
        latents = ae.encode(images).cpu()
        codes = [c.cpu() for c in ae.pyramid_codes(images, sides)]
        recon = ae.decode(ae.codes_to_latents(codes[-1].to(DEVICE))).cpu()
    np.testing.assert_allclose(latents.numpy(), expected['expected/vq_latent_top'], atol=1e-4)
    for side, c in zip(sides, codes):
        assert c.shape == (4, side, side)
        assert (c.numpy() == expected[f'expected/vq_codes_{side}']).mean() >= 0.99
    np.testing.assert_allclose(recon.numpy(), expected['expected/vq_recon'], atol=1e-3)


# --- a functional reference written from the spec (docs/model.md §3), for configs beyond the fixture ---

def ref_norm(x, sd, p):
    return F.group_norm(x, 32, sd[p + '.weight'], sd[p + '.bias'], eps=1e-6)


def ref_conv(x, sd, p, **kw):
    return F.conv2d(x, sd[p + '.weight'], sd[p + '.bias'], **kw)


def ref_res(x, sd, p):
    h = ref_conv(F.silu(ref_norm(x, sd, p + '.norm1')), sd, p + '.conv1', padding=1)
    h = ref_conv(F.silu(ref_norm(h, sd, p + '.norm2')), sd, p + '.conv2', padding=1)
    if p + '.nin_shortcut.weight' in sd:
        x = ref_conv(x, sd, p + '.nin_shortcut')
    return x + h


def ref_attn(x, sd, p):
    B, C, H, W = x.shape
    h = ref_norm(x, sd, p + '.norm')
    q, k, v = (ref_conv(h, sd, f'{p}.{n}').reshape(B, C, H * W) for n in 'qkv')
    w = torch.softmax(torch.einsum('bci,bcj->bij', q, k) * C ** -0.5, dim=2)
    out = torch.einsum('bcj,bij->bci', v, w).reshape(B, C, H, W)
    return x + ref_conv(out, sd, p + '.proj_out')


def ref_encode(x, sd, levels, blocks, normalize):
    h = ref_conv(x, sd, 'encoder.conv_in', padding=1)
    for i in range(levels):
        for j in range(blocks):
            h = ref_res(h, sd, f'encoder.conv_blocks.{i}.res.{j}')
            if i == levels - 1:
                h = ref_attn(h, sd, f'encoder.conv_blocks.{i}.attn.{j}')
        if i < levels - 1:
            h = ref_conv(F.pad(h, (0, 1, 0, 1)), sd, f'encoder.conv_blocks.{i}.downsample.conv', stride=2)
    h = ref_res(ref_attn(ref_res(h, sd, 'encoder.mid.0'), sd, 'encoder.mid.1'), sd, 'encoder.mid.2')
    h = ref_conv(F.silu(ref_norm(h, sd, 'encoder.norm_out')), sd, 'encoder.conv_out', padding=1)
    z = ref_conv(h, sd, 'quant_conv')
    return F.normalize(z, dim=1) if normalize else z


def ref_decode(z, sd, levels, blocks, normalize):
    z = F.normalize(z, dim=1) if normalize else z
    h = ref_conv(ref_conv(z, sd, 'post_quant_conv'), sd, 'decoder.conv_in', padding=1)
    h = ref_res(ref_attn(ref_res(h, sd, 'decoder.mid.0'), sd, 'decoder.mid.1'), sd, 'decoder.mid.2')
    for i in range(levels):
        for j in range(blocks + 1):
            h = ref_res(h, sd, f'decoder.conv_blocks.{i}.res.{j}')
            if i == 0:
                h = ref_attn(h, sd, f'decoder.conv_blocks.{i}.attn.{j}')
        if i < levels - 1:
            h = ref_conv(F.interpolate(h, scale_factor=2, mode='nearest'), sd,
                         f'decoder.conv_blocks.{i}.upsample.conv', padding=1)
    return ref_conv(F.silu(ref_norm(h, sd, 'decoder.norm_out')), sd, 'decoder.conv_out', padding=1)


def write_config(path, params):
    with open(path, 'w') as f:
        yaml.safe_dump({'model': {'target': 'cbgen.autoencoder.VQModel', 'params': params}}, f)


def randomize(model, seed):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)


CONFIGS = [
    dict(ch=32, ch_mult=[1, 2], z_channels=32, num_res_blocks=1, n_embed=64, embed_dim=4, normalize=True),
    dict(ch=64, ch_mult=[1, 1, 2], z_channels=64, num_res_blocks=2, n_embed=128, embed_dim=8, normalize=False),
    dict(ch=32, ch_mult=[1, 2, 2, 2], z_channels=16, num_res_blocks=1, n_embed=32, embed_dim=16, normalize=True),
]


@pytest.mark.parametrize('cfg', CONFIGS)
def test_any_config_of_the_format(tmp_path, cfg):
    dd = {k: cfg[k] for k in ('ch', 'ch_mult', 'z_channels', 'num_res_blocks')}
    params = dict(embed_dim=cfg['embed_dim'], n_embed=cfg['n_embed'], normalize=cfg['normalize'], ddconfig=dd)
    write_config(tmp_path / 'ae.yaml', params)
    source = VQAutoencoder(AutoencoderConfig(n_embed=cfg['n_embed'], embed_dim=cfg['embed_dim'],
                                             normalize=cfg['normalize'], **dd))
    randomize(source, 0)
    torch.save({'state_dict': source.state_dict()}, tmp_path / 'ae.pth')
    ae = load_autoencoder(tmp_path / 'ae.yaml', tmp_path / 'ae.pth')
    sd = dict(ae.state_dict())
    levels, stride = len(dd['ch_mult']), 2 ** (len(dd['ch_mult']) - 1)
    x = torch.rand(2, 3, 4 * stride, 4 * stride, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        z = ae.encode(x)
        assert z.shape == (2, cfg['embed_dim'], 4, 4)
        torch.testing.assert_close(z, ref_encode(x, sd, levels, dd['num_res_blocks'], cfg['normalize']),
                                   atol=1e-4, rtol=1e-4)
        codebook = ae.codebook()
        if cfg['normalize']:
            torch.testing.assert_close(codebook.norm(dim=1), torch.ones(cfg['n_embed']))
        codes = ae.pyramid_codes(x, [1, 2, 4])
        for side, c in zip([1, 2, 4], codes):
            xs = x if side == 4 else F.interpolate(x, size=side * stride, mode='bilinear', align_corners=False)
            zs = ref_encode(xs, sd, levels, dd['num_res_blocks'], cfg['normalize'])
            ref_codes = torch.cdist(zs.permute(0, 2, 3, 1).reshape(-1, zs.shape[1]), codebook).argmin(1)
            assert (c.reshape(-1) == ref_codes).float().mean() >= 0.99
        latents = ae.codes_to_latents(codes[-1])
        torch.testing.assert_close(ae.decode(latents), ref_decode(latents, sd, levels, dd['num_res_blocks'],
                                                                  cfg['normalize']), atol=1e-3, rtol=1e-3)
        half = ae.rescale_latents(z, 2)
        expected = F.interpolate(z, size=2, mode='bilinear', align_corners=False)
        torch.testing.assert_close(half, F.normalize(expected, dim=1) if cfg['normalize'] else expected)


def test_one_image_codes_as_in_a_batch():
    """Width 32, stride 2 (the ablation sweep's layout): at the 1x1 scale the second level's first norm sees a
    1x1 map with one channel per group, which F.group_norm refuses for a batch of one."""
    ae = VQAutoencoder(AutoencoderConfig(n_embed=64, embed_dim=4, normalize=True, ch=32, ch_mult=[1, 2], z_channels=32,
                                        num_res_blocks=1))
    randomize(ae, 0)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        batch = ae.pyramid_codes(x, [1, 2, 4])
        alone = [ae.pyramid_codes(image[None], [1, 2, 4]) for image in x]
    for side, codes in enumerate(batch):
        assert torch.equal(codes, torch.cat([one[side] for one in alone]))


def llamagen_layout(n_embed=64, embed_dim=4):
    """A state dict laid out like LlamaGen's vq_ds16_c2i.pt: {'model': ...}, raw codebook, extra buffers."""
    dd = dict(ch=32, ch_mult=[1, 2], z_channels=32, num_res_blocks=1)
    model = VQAutoencoder(AutoencoderConfig(n_embed=n_embed, embed_dim=embed_dim, normalize=False, **dd))
    randomize(model, 3)
    sd = {k: v for k, v in model.state_dict().items() if k not in ('quantize.initialized', 'cluster_usage_train')}
    sd['quantize.codebook_used'] = torch.zeros(65536)
    return dd, {'model': sd}


def test_loads_llamagen_layout(tmp_path):
    dd, ckpt = llamagen_layout()
    torch.save(ckpt, tmp_path / 'vq_ds16_c2i.pt')
    write_config(tmp_path / 'raw.yaml', dict(embed_dim=4, n_embed=64, normalize=False, ddconfig=dd))
    ae = load_autoencoder(tmp_path / 'raw.yaml', tmp_path / 'vq_ds16_c2i.pt')
    torch.testing.assert_close(ae.codebook(), ckpt['model']['quantize.embedding.weight'])
    # with normalize: true the raw table loads as the parametrization's original and is normalized on use
    write_config(tmp_path / 'norm.yaml', dict(embed_dim=4, n_embed=64, normalize=True, ddconfig=dd))
    ae = load_autoencoder(tmp_path / 'norm.yaml', tmp_path / 'vq_ds16_c2i.pt')
    torch.testing.assert_close(ae.codebook(), F.normalize(ckpt['model']['quantize.embedding.weight'], dim=1))


def test_loads_generator_checkpoint_and_plain_layouts(tmp_path, fixtures_dir, fixture_ae):
    """Each layout loads exactly the tensors of its file: the published generator checkpoint ('model' holds the
    generator's keys and the autoencoder's under `autoenc.`), and other random weights for each of a plain state
    dict, {'state_dict': ...} and {'model': ...} with `autoenc.` keys beside generator keys."""
    cfg = f'{fixtures_dir}/autoenc/autoencoder_config.yaml'
    published = f'{fixtures_dir}/checkerboard-tiny-2x/checkpoint-last.pth'
    generator_sd = torch.load(published, weights_only=False)['model']
    cases = [(published, {k[len('autoenc.'):]: v for k, v in generator_sd.items() if k.startswith('autoenc.')})]
    layouts = {'plain': lambda sd: sd, 'state_dict': lambda sd: {'state_dict': sd},
               'generator': lambda sd: {'model': {'head.weight': torch.ones(3),
                                                  **{f'autoenc.{k}': v for k, v in sd.items()}}}}
    for seed, (name, layout) in enumerate(layouts.items()):
        ae = copy.deepcopy(fixture_ae)
        randomize(ae, seed)
        torch.save(layout(ae.state_dict()), tmp_path / f'{name}.pth')
        cases.append((tmp_path / f'{name}.pth', ae.state_dict()))
    for path, expected in cases:
        loaded = load_autoencoder(cfg, path).state_dict()
        assert loaded.keys() == expected.keys(), path
        for key, value in expected.items():
            assert torch.equal(loaded[key], value), (path, key)


def test_checkpoint_errors(tmp_path, fixtures_dir, fixture_ae):
    cfg = f'{fixtures_dir}/autoenc/autoencoder_config.yaml'
    with pytest.raises(CheckpointError, match='not found'):
        load_autoencoder(cfg, tmp_path / 'missing.pth')
    data = open(f'{fixtures_dir}/autoenc/checkpoint.pth', 'rb').read()
    (tmp_path / 'truncated.pth').write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated.pth'):
        load_autoencoder(cfg, tmp_path / 'truncated.pth')
    sd = dict(fixture_ae.state_dict())
    sd['extra.weight'] = sd.pop('quant_conv.weight')
    torch.save(sd, tmp_path / 'keys.pth')
    with pytest.raises(CheckpointError, match=r"missing keys \['quant_conv.weight'\].*unexpected keys \['extra"):
        load_autoencoder(cfg, tmp_path / 'keys.pth')
    write_config(tmp_path / 'wide.yaml', dict(embed_dim=8, n_embed=1024, normalize=True,
                                               ddconfig=dict(ch=32, ch_mult=[1, 1, 1, 2, 2], z_channels=64,
                                                             num_res_blocks=1)))
    mismatch = r'shape mismatch at cluster_usage_train: model expects \(1024,\), checkpoint has \(512,\)'
    with pytest.raises(CheckpointError, match=mismatch):
        load_autoencoder(tmp_path / 'wide.yaml', f'{fixtures_dir}/autoenc/checkpoint.pth')


class Untrusted:
    pass


def test_refuses_unsafe_globals_without_opt_in(tmp_path, fixtures_dir, fixture_ae):
    cfg = f'{fixtures_dir}/autoenc/autoencoder_config.yaml'
    torch.save({'state_dict': fixture_ae.state_dict(), 'args': argparse.Namespace(a=1)}, tmp_path / 'ns.pth')
    load_autoencoder(cfg, tmp_path / 'ns.pth')  # argparse.Namespace is allowed
    torch.save({'state_dict': fixture_ae.state_dict(), 'extra': Untrusted()}, tmp_path / 'bad.pth')
    with pytest.raises(CheckpointError, match=r'Untrusted.*--unsafe_load'):
        load_autoencoder(cfg, tmp_path / 'bad.pth')
    with pytest.warns(UserWarning, match='weights_only=False'):
        load_autoencoder(cfg, tmp_path / 'bad.pth', allow_unsafe=True)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match='autoencoder config not found: .*nope.yaml'):
        load_autoencoder(tmp_path / 'nope.yaml')
    write_config(tmp_path / 'bad.yaml', dict(embed_dim=8, n_embed=16, ddconfig=dict(chh=32)))
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'model.params.ddconfig.chh' \(did you mean 'ch'\?\)"):
        load_autoencoder(tmp_path / 'bad.yaml')
    write_config(tmp_path / 'bad.yaml', dict(embed_dim=8, n_embed='16'))
    with pytest.raises(ConfigError, match=r"bad.yaml: model.params.n_embed must be int, got '16'"):
        load_autoencoder(tmp_path / 'bad.yaml')
    write_config(tmp_path / 'bad.yaml', dict(embed_dim=8))
    with pytest.raises(ConfigError, match=r"bad.yaml: missing key 'model.params.n_embed'"):
        load_autoencoder(tmp_path / 'bad.yaml')


def test_llamagen_defaults(tmp_path):
    write_config(tmp_path / 'd.yaml', dict(embed_dim=8, n_embed=16, ddconfig={}))
    ae = load_autoencoder(tmp_path / 'd.yaml')
    assert ae.stride == 16 and ae.encoder.conv_in.out_channels == 128
    assert ae.encoder.conv_out.out_channels == 256 and len(ae.encoder.conv_blocks[0].res) == 2


def test_image_errors(fixture_ae):
    with pytest.raises(ValueError, match='shape'):
        fixture_ae.encode(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match='channels'):
        fixture_ae.encode(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match='multiple of the autoencoder stride 16'):
        fixture_ae.encode(torch.zeros(1, 3, 40, 40))
    with pytest.raises(ValueError, match='needs 128x128'):
        fixture_ae.pyramid_codes(torch.zeros(1, 3, 64, 64), [1, 2, 8])
