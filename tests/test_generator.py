"""Generator: parity with the published fixtures, a spec reference for other configs, sampler consistency."""
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from models import build_generator, load_generator
from models.checkerboard import (checkerboard_order, parse_schedule, sampling_block_sizes, scan_ranks,
                                 schedule_block_sizes, serial_steps)
from models.generator_config import GeneratorConfig
from models.likelihood import code_log_likelihood, code_log_probs
from models.graphed_sampler import GraphedSampler
from models.sample_settings import SampleSettings
from models.sampler import draw, filter_logits, sample_uniforms
from conftest import DEVICE
from util.checkpoint import CheckpointError

MODELS = ['checkerboard-tiny-2x', 'checkerboard-tiny-4x']


@pytest.fixture(scope='module', params=MODELS)
def published(request, fixtures_dir):
    model = load_generator(f'{fixtures_dir}/{request.param}/checkpoint-last.pth', device=DEVICE)
    return model, np.load(f'{fixtures_dir}/{request.param}/expected.npz')


def test_teacher_forced_logits_match_published(published):
    model, expected = published
    codes = [torch.from_numpy(expected[f'expected/vq_codes_{s}']).long().to(DEVICE) for s in model.sides]
    labels = torch.from_numpy(expected['inputs/labels']).long().to(DEVICE)
    for steps in (2, 4):
        with torch.no_grad():
            logits = model.teacher_forced_logits(codes, labels, steps)[0].cpu()
        np.testing.assert_allclose(logits.numpy(), expected[f'expected/train_logits_steps{steps}'], atol=1e-3)
        loss = F.cross_entropy(logits.flatten(0, 1), model_targets(model, [c.cpu() for c in codes]).flatten())
        assert abs(loss.item() - float(expected[f'expected/train_loss_steps{steps}'])) < 1e-4


def model_targets(model, codes):
    return torch.cat([c.flatten(1)[:, (model.seq_positions[model.scale_slice(i)] - model.offsets[i]).cpu()]
                      for i, c in enumerate(codes)], dim=1)


def test_greedy_sampling_matches_published(published):
    model, expected = published
    settings = SampleSettings(cfg=float(expected['sample/cfg']), cfg_start_step=int(expected['sample/cfg_start_step']),
                              steps_per_scale=int(expected['sample/steps_per_scale']), temperature=0.0)
    out = model.sample(settings, labels=torch.from_numpy(expected['sample/labels']).to(DEVICE), return_step_logits=True)
    for side, codes in zip(model.sides, out.codes):
        assert np.array_equal(codes.cpu().numpy(), expected[f'expected/sample_codes_{side}']), side
    for side, image in zip(model.sides, out.images):
        if side > 1:
            np.testing.assert_allclose(image.cpu().numpy(), expected[f'expected/sample_image_{side}'], atol=1e-3)
    for t, logits in enumerate(out.step_logits):
        np.testing.assert_allclose(logits.cpu().numpy(), expected[f'expected/sample_step_logits_{t:02d}'], atol=1e-3)
    assert len(out.step_logits) == len([k for k in expected if k.startswith('expected/sample_step_logits')])


# --- a reference written from the spec (docs/model.md §4-§5) for configs beyond the fixtures ---

def ref_teacher_forced_logits(model, codes, labels, steps):
    """Eval-mode logits (B, P, V) computed token by token from the state dict and the spec text."""
    sd = {k: v.double() for k, v in model.state_dict().items() if v.is_floating_point()}
    cfg = model.llama
    C, H = model.embed_positions.weight.shape[1], cfg.num_heads
    D = C // H
    codebook = model.autoenc.codebook().double()

    def mlp(x, prefix):
        for j in (0, 2):
            x = F.silu(F.linear(x, sd[f'{prefix}.net.{j}.weight'], sd[f'{prefix}.net.{j}.bias']))
        return F.linear(x, sd[f'{prefix}.net.4.weight'], sd.get(f'{prefix}.net.4.bias'))

    rows = sd['llama.rotary_emb.position_embeddings.parametrizations.weight.original']
    rows = rows.view(rows.shape[0], D, 2)
    rows = rows / rows.norm(dim=-1, keepdim=True)  # unit modulus, (P + 2, D, 2)
    P = model.num_positions
    B = codes[0].shape[0]
    x_tokens, cur_ids, past_ids, blocks = [], [], [], []
    if model.class_cond:
        x_tokens.append(sd['class_embeddings.weight'][labels])
        cur_ids.append(P), past_ids.append(P), blocks.append(0)
    block, offset, prev = 1, 0, None
    for i, s in enumerate(model.sides):
        n, b = s * s, max(1, s * s // steps)
        rank = scan_ranks(s, model.scan_order).reshape(-1)  # the orders themselves: tests/test_checkerboard.py
        cell_of_rank = torch.argsort(rank)
        vecs = codebook[codes[i].reshape(B, n)]  # (B, n, E) by cell
        if prev is None:
            src = torch.zeros_like(vecs)
        else:
            up = F.interpolate(prev.transpose(1, 2).reshape(B, -1, int(prev.shape[1] ** 0.5),
                                                            int(prev.shape[1] ** 0.5)),
                               size=s, mode='bilinear', align_corners=False)
            up = F.normalize(up, dim=1) if model.autoenc.normalize else up
            src = up.reshape(B, -1, n).transpose(1, 2)
        for r in range(n):
            cell = int(cell_of_rank[r])
            pos = sd['embed_positions.weight'][offset + cell].expand(B, C)
            source = F.linear(mlp(src[:, cell], 'embed_codevecs_mlp'), sd['src_latents_proj.weight'],
                              sd['src_latents_proj.bias'])
            if r >= b:
                prev_cell = int(cell_of_rank[r - b])
                carried_pos = sd['embed_positions.weight'][offset + prev_cell].expand(B, C)
                carried = mlp(vecs[:, prev_cell], 'embed_codevecs_mlp')
                past_ids.append(offset + prev_cell)
            else:
                carried_pos = sd['empty_token_pos'].expand(B, C)
                carried = sd['empty_token_emb'].expand(B, C)
                past_ids.append(P + 1)
            x_tokens.append(F.linear(torch.cat([pos, source, carried_pos, carried], -1),
                                     sd['combine_inputs.weight'], sd['combine_inputs.bias']))
            cur_ids.append(offset + cell)
            blocks.append(block + r // b)
        block += -(-n // b)
        offset += n
        prev = vecs
    x = torch.stack(x_tokens, 1)  # (B, L, C)
    L = x.shape[1]
    blocks = torch.tensor(blocks)
    allowed = blocks[None, :] <= blocks[:, None]
    y = sd['class_embeddings.weight'][labels][:, None] if model.class_cond else None

    def rms(v, w):
        return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + model.llama.norm.eps) * w

    def rotate(v, f):  # v (B, L, H, D), f (L, H or 1, D, 2): v*Re(f) + rotate_half(v)*Im(f)
        half = D // 2
        v1, v2 = v[..., :half], v[..., half:]
        return torch.cat([v1 * f[..., :half, 0] - v2 * f[..., :half, 1],
                          v2 * f[..., half:, 0] + v1 * f[..., half:, 1]], -1)

    f_cur, f_past = rows[cur_ids][:, None], rows[past_ids][:, None]  # (L, 1, D, 2)
    for layer in range(len(model.llama.layers)):
        p = f'llama.layers.{layer}.'
        h = rms(x, sd[p + 'attention_norm.weight'])
        if y is not None:
            shift, scale = F.linear(F.silu(y), sd[p + 'input_modulation.adaLN_modulation.1.weight'],
                                    sd[p + 'input_modulation.adaLN_modulation.1.bias']).chunk(2, -1)
            h = h * scale + shift
        q, k, v = F.linear(h, sd[p + 'attention.wqkv.weight']).view(B, L, 3, H, D).unbind(2)
        if layer < sd['llama.rotary_emb.mixing_coeffs'].shape[0]:
            a = torch.sigmoid(sd['llama.rotary_emb.mixing_coeffs'][layer])[None, :, None, None]
            f_key = a * f_cur + (1 - a) * f_past
        else:
            f_key = f_cur
        q, k = rotate(q, f_cur), rotate(k, f_key)
        scores = torch.einsum('bihd,bjhd->bhij', q, k) / D ** 0.5
        attn = scores.masked_fill(~allowed, float('-inf')).softmax(-1)
        x = x + F.linear(torch.einsum('bhij,bjhd->bihd', attn, v).reshape(B, L, C), sd[p + 'attention.wo.weight'])
        h = rms(x, sd[p + 'ffn_norm.weight'])
        if y is not None:
            shift, scale = F.linear(F.silu(y), sd[p + 'post_attention_modulation.adaLN_modulation.1.weight'],
                                    sd[p + 'post_attention_modulation.adaLN_modulation.1.bias']).chunk(2, -1)
            h = h * scale + shift
        ffn = F.silu(F.linear(h, sd[p + 'feed_forward.w1.weight'])) * F.linear(h, sd[p + 'feed_forward.w3.weight'])
        x = x + F.linear(ffn, sd[p + 'feed_forward.w2.weight'])
    x = rms(x, sd['llama.norm.weight'])
    if model.class_cond:
        x = x[:, 1:]
    w = sd['lm_head.weight']
    if model.head_mlp is not None:
        w = w + mlp(codebook, 'head_mlp')
    return F.linear(x, w, sd['lm_head.bias'])


def tiny_model_config(tmp_path, **overrides):
    ae = {'model': {'params': dict(embed_dim=overrides.pop('embed_dim', 4), n_embed=overrides.pop('n_embed', 32),
                                   normalize=overrides.pop('normalize', True),
                                   ddconfig=dict(ch=32, ch_mult=[1, 2, 2], z_channels=32, num_res_blocks=1))}}
    (tmp_path / 'ae.yaml').write_text(yaml.safe_dump(ae))
    llama = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2)
    llama.update(overrides.pop('llama', {}))
    cfg = dict(img_size=32, scale_ratio=2, class_cond=True, num_classes=5, use_head_mlp=False,
               autoenc=dict(config_path=str(tmp_path / 'ae.yaml')), llama_config=llama)
    cfg.update(overrides)
    return cfg


def random_generator(tmp_path, seed=0, **overrides):
    model = build_generator(GeneratorConfig.from_dict(tiny_model_config(tmp_path, **overrides)),
                            load_autoencoder_checkpoint=False)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if 'rotary' in name or 'mixing' in name else 0.2))
    return model.eval()


def random_codes(model, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(model.vocab_size, (batch, s, s), generator=gen) for s in model.sides]


VARIANTS = [
    {},
    dict(llama=dict(hidden_size=48, num_attention_heads=4, num_hidden_layers=3)),  # head width 12
    dict(llama=dict(hidden_size=32, num_attention_heads=2, num_hidden_layers=1), num_mixing_layers=0),
    dict(num_mixing_layers='all', use_head_mlp=True),
    dict(class_cond=False, num_classes=0),
    dict(embed_dim=8, n_embed=64, normalize=False, scale_ratio=4),
    dict(img_size=64, scale_ratio=3, scale_min_size=2, llama=dict(rms_norm_eps=1e-5)),
]
# one-scale models (the top 8x8 grid alone): the plain raster model, and a one-scale parallel unconditional one
ONE_SCALE = [dict(one_scale=True, scan_order='raster'), dict(one_scale=True, class_cond=False, num_classes=0)]
SAMPLING_VARIANTS = VARIANTS[:5] + ONE_SCALE


@pytest.mark.parametrize('variant', VARIANTS + ONE_SCALE, ids=lambda v: ','.join(v) or 'base')
def test_matches_spec_reference(tmp_path, variant):
    model = random_generator(tmp_path, **{k: (dict(v) if isinstance(v, dict) else v) for k, v in variant.items()})
    codes = random_codes(model, 2)
    labels = torch.tensor([1, model.num_classes]) if model.class_cond else None
    for steps in (1, 3):
        with torch.no_grad():
            ours = model.teacher_forced_logits(codes, labels, steps)[0]
        torch.testing.assert_close(ours.double(), ref_teacher_forced_logits(model, codes, labels, steps),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('variant', SAMPLING_VARIANTS, ids=lambda v: ','.join(v) or 'base')
def test_cached_sampling_equals_full_forward(tmp_path, variant):
    model = random_generator(tmp_path, seed=1, **{k: (dict(v) if isinstance(v, dict) else v)
                                                 for k, v in variant.items()}).to(DEVICE)
    cond = model.class_cond
    kwargs = dict(labels=torch.tensor([0, 3, 4], device=DEVICE)) if cond else dict(batch_size=3)
    for steps in (1, 2, 5):
        out = model.sample(SampleSettings(cfg=1.5 if cond else 0.0, steps_per_scale=steps), **kwargs, seeds=[5, 6, 7],
                           return_step_logits=True, decode='none')
        step_logits = torch.cat(out.step_logits, dim=1)  # (B2, P, V) in sequence order
        labels = torch.cat([kwargs['labels'], torch.full((3,), model.num_classes, device=DEVICE)]) if cond else None
        codes = [torch.cat([c, c]) for c in out.codes] if cond else out.codes
        with torch.no_grad():
            full = model.teacher_forced_logits(codes, labels, steps)[0]
        torch.testing.assert_close(step_logits, full, atol=1e-4, rtol=1e-4)


def test_same_seed_same_codes_whatever_the_batch(tmp_path):
    model = random_generator(tmp_path, seed=2)
    alone = model.sample(SampleSettings(cfg=2.0, steps_per_scale=2), labels=[3], seeds=[11], decode='none')
    batch = model.sample(SampleSettings(cfg=2.0, steps_per_scale=2), labels=[1, 3, 0], seeds=[7, 11, 9], decode='none')
    for a, b in zip(alone.codes, batch.codes):
        assert torch.equal(a[0], b[1])
    other = model.sample(SampleSettings(cfg=2.0, steps_per_scale=2), labels=[3], seeds=[12], decode='none')
    assert any(not torch.equal(a, b) for a, b in zip(alone.codes, other.codes))


def test_every_position_drawn_exactly_once(tmp_path):
    model = random_generator(tmp_path, seed=3, img_size=64)  # sides 1, 2, 4, 8
    for steps in list(range(1, 17)) + [23, 31, 32, 33, 63, 64]:
        out = model.sample(SampleSettings(steps_per_scale=steps), labels=[2], seeds=[0], decode='none')
        first = 0
        for i, side in enumerate(model.sides):
            n = side * side
            sizes = sampling_block_sizes(n, steps)
            by_rank = out.maps['step'][i].reshape(-1)[torch.argsort(checkerboard_order(side).reshape(-1))]
            expected = first + torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
            assert torch.equal(by_rank, expected), (steps, side)
            first += len(sizes)
        assert out.num_steps == first


def test_sampling_maps_and_images(tmp_path):
    model = random_generator(tmp_path, seed=4)
    out = model.sample(SampleSettings(temperature=1.0, steps_per_scale=2), labels=[0, 1], seeds=[1, 2])
    for i, side in enumerate(model.sides):
        assert out.codes[i].shape == out.maps['prob'][i].shape == out.maps['entropy'][i].shape == (2, side, side)
        assert out.images[i].shape == (2, 3, side * model.autoenc.stride, side * model.autoenc.stride)
        assert torch.all((out.maps['prob'][i] > 0) & (out.maps['prob'][i] <= 1))
        assert torch.all(out.maps['entropy'][i] >= 0)
        assert torch.all(out.maps['entropy'][i] <= np.log(model.vocab_size) + 1e-4)
    top = model.sample(SampleSettings(temperature=1.0, steps_per_scale=2), labels=[0, 1], seeds=[1, 2], decode='top')
    assert len(top.images) == 1 and torch.allclose(top.images[0], out.images[-1])


def test_filter_logits():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(filter_logits(logits, top_k=2)[0, 2:]).all()
    assert torch.isfinite(filter_logits(logits, top_k=2)[0, :2]).all()
    kept = torch.isfinite(filter_logits(logits, top_p=0.7)).sum()
    assert kept == 2  # softmax = .64, .24, .09, .03: two codes reach 0.7
    assert torch.isfinite(filter_logits(logits, top_p=0.01)).sum() == 1
    assert torch.equal(filter_logits(logits), logits)


def test_draw_follows_the_distribution_per_sample():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0])
    logits = probs.log().expand(2, 20000, -1)  # (B, S, V)
    tokens, logp, entropy = draw(logits, 1.0, 0, 1.0, sample_uniforms([0, 1], 20000, 'cpu'))
    assert (tokens < 4).all()  # never a zero-probability code
    freq = torch.bincount(tokens[0], minlength=5) / tokens.shape[1]
    assert torch.allclose(freq, probs, atol=0.01)  # about 4 standard errors
    assert torch.allclose(logp.exp(), probs[tokens])
    assert torch.allclose(entropy, -(probs[:4] * probs[:4].log()).sum().expand(2, 20000))
    alone, _, _ = draw(logits[1:], 1.0, 0, 1.0, sample_uniforms([1], 20000, 'cpu'))
    assert torch.equal(alone[0], tokens[1])  # sample 1's draw does not depend on sample 0
    kept, _, _ = draw(logits, 1.0, 2, 1.0, sample_uniforms([0, 1], 20000, 'cpu'))
    assert set(kept.unique().tolist()) == {0, 1}  # top_k = 2


def test_top_k_one_is_greedy(tmp_path):
    model = random_generator(tmp_path, seed=5)
    greedy = model.sample(SampleSettings(temperature=0.0), labels=[1], seeds=[0], decode='none')
    top1 = model.sample(SampleSettings(temperature=1.0, top_k=1), labels=[1], seeds=[3], decode='none')
    for a, b in zip(greedy.codes, top1.codes):
        assert torch.equal(a, b)


def test_sample_argument_errors(tmp_path):
    model = random_generator(tmp_path)
    with pytest.raises(ValueError, match='class-conditional'):
        model.sample(SampleSettings(), batch_size=2)
    with pytest.raises(ValueError, match=r'labels must be in \[0, 5\)'):
        model.sample(SampleSettings(), labels=[5])
    with pytest.raises(ValueError, match='one seed per sample'):
        model.sample(SampleSettings(), labels=[1, 2], seeds=[0])
    with pytest.raises(ValueError, match='precision'):
        model.sample(SampleSettings(precision='fp8'), labels=[1])


def test_mismatched_config_names_keys_and_shapes(tmp_path, fixtures_dir):
    folder = tmp_path / 'checkerboard-tiny-2x'
    shutil.copytree(f'{fixtures_dir}/checkerboard-tiny-2x', folder)
    shutil.copytree(f'{fixtures_dir}/autoenc', tmp_path / 'autoenc')
    cfg = yaml.safe_load((folder / 'config.yaml').read_text())
    cfg['model']['llama_config']['hidden_size'] = 32
    (folder / 'config.yaml').write_text(yaml.safe_dump(cfg))
    mismatch = r'shape mismatch at empty_token_emb: model expects \(32,\), checkpoint has \(64,\)'
    with pytest.raises(CheckpointError, match=mismatch):
        load_generator(folder / 'checkpoint-last.pth')
    cfg['model']['llama_config']['hidden_size'] = 64
    cfg['model']['use_head_mlp'] = True
    (folder / 'config.yaml').write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match=r"missing keys \['head_mlp.net.0.weight'"):
        load_generator(folder / 'checkpoint-last.pth')
    cfg['model']['hidden'] = 1
    (folder / 'config.yaml').write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="checkpoint-last.pth: its model config does not fit this code: "
                                              "unknown key 'model.hidden'"):
        load_generator(folder / 'checkpoint-last.pth')


def test_training_forward_uses_generator_and_reports_scales(tmp_path):
    model = random_generator(tmp_path, seed=6, random_block_size=True, random_replace=0.2).train()
    codes, labels = random_codes(model, 4, seed=1), torch.tensor([0, 1, 2, 3])
    runs = [model(codes, labels, generator=torch.Generator().manual_seed(s)) for s in (0, 0, 1)]
    assert runs[0][0].item() == runs[1][0].item() != runs[2][0].item()
    stats = runs[0][1]
    assert set(stats) == {'loss'} | {f'{k}_s{s}' for s in model.sides for k in ('loss', 'acc')}
    runs[0][0].backward()
    assert model.lm_head.weight.grad is not None and model.autoenc.quant_conv.weight.grad is None
    model.eval()
    with torch.no_grad():
        loss, _ = model(codes, labels)
        logits = model.teacher_forced_logits(codes, labels)[0]
    assert abs(loss.item() - F.cross_entropy(logits.flatten(0, 1), model_targets(model, codes).flatten()).item()) < 1e-5


# --- schedules and the exact likelihood under a schedule --------------------------------------------------

def test_per_scale_schedules_give_the_expected_blocks_and_totals():
    sides = [1, 2, 4, 8]
    assert schedule_block_sizes(sides, [1, 4, 4, 6]) == [[1], [1, 1, 1, 1], [4, 4, 4, 4], [10] * 6 + [4]]
    assert serial_steps(sides, [1, 4, 4, 6]) == 1 + 4 + 4 + 7  # 64 // 6 = 10: six blocks and a remainder
    assert serial_steps(sides, 4) == 1 + 4 + 4 + 4  # a single number is capped at each scale's positions
    assert serial_steps(sides, 1) == 4 and serial_steps(sides, 64) == 1 + 4 + 16 + 64
    assert parse_schedule('4') == 4 and parse_schedule('1,4,4,6') == [1, 4, 4, 6]


@pytest.mark.parametrize('schedule, message', [
    ([1, 4, 0, 4], 'steps must be whole numbers >= 1'),
    (0, 'steps must be whole numbers >= 1'),
    ([1, 5, 4, 4], '5 steps for the 2x2 scale, which has only 4 positions'),
    ([1, 4, 4], 'has 3 entries but the model has 4 scales'),
])
def test_bad_schedules_are_one_clear_error(schedule, message):
    with pytest.raises(ValueError, match=message):
        schedule_block_sizes([1, 2, 4, 8], schedule)


def test_bad_schedule_text_is_one_clear_error():
    with pytest.raises(ValueError, match="one per scale"):
        parse_schedule('1;4')


def test_sampler_follows_a_per_scale_schedule(tmp_path):
    model = random_generator(tmp_path, seed=3, img_size=64)
    assert model.sides == [1, 2, 4, 8, 16]
    out = model.sample(SampleSettings(steps_per_scale=[1, 2, 3, 8, 16]), labels=[2], seeds=[0], decode='none')
    steps = [m[0].unique().numel() for m in out.maps['step']]
    assert steps == [1, 2, 4, 8, 16]  # 3 steps on 16 positions: blocks of 5, 5, 5 and 1
    assert out.num_steps == serial_steps(model.sides, [1, 2, 3, 8, 16]) == 31


PYRAMID_ORDERS = [dict(scan_order='raster'), dict(scan_order='random')]  # the ablations' other pyramid orders


@pytest.mark.parametrize('variant', SAMPLING_VARIANTS + PYRAMID_ORDERS,
                         ids=lambda v: ','.join(f'{k}={v[k]}' if k == 'scan_order' else k for k in v) or 'base')
def test_likelihood_equals_the_forced_sampler(tmp_path, variant):
    """The teacher-forced likelihood under a schedule equals the log-probabilities that the sampler records
    when it is forced to the same codes step by step (an independent computation, through the KV cache)."""
    model = random_generator(tmp_path, seed=4, **{k: (dict(v) if isinstance(v, dict) else v)
                                                 for k, v in variant.items()})
    kwargs = dict(labels=torch.tensor([0, 3, 4])) if model.class_cond else dict(batch_size=3)
    data = model.sample(SampleSettings(steps_per_scale=3), **kwargs, seeds=[1, 2, 3], decode='none').codes  # any codes
    for schedule in (1, 2, 5, [min(3, s * s) for s in model.sides]):
        settings = SampleSettings(steps_per_scale=schedule)
        forced = model.sample(settings, **kwargs, seeds=[9, 9, 9], decode='none', known_codes=data,
                              known_mask=[torch.ones_like(c, dtype=torch.bool) for c in data])
        assert all(torch.equal(a, b) for a, b in zip(forced.codes, data))
        recorded = torch.stack([m.flatten(1).sum(1) for m in forced.maps['logp']], 1)  # (B, scales)
        ours = code_log_likelihood(model, data, kwargs.get('labels'), settings)
        torch.testing.assert_close(ours, recorded, atol=1e-3, rtol=1e-5)
        for position_logp, sampled in zip(code_log_probs(model, data, kwargs.get('labels'), settings),
                                          forced.maps['logp']):  # every position's, on its grid cell
            torch.testing.assert_close(position_logp, sampled, atol=1e-4, rtol=1e-5)


def test_bf16_logits_stay_close_to_fp32(tmp_path):
    """bf16 autocast (the GPU default) changes the teacher-forced logits by a small fraction of their spread."""
    model = random_generator(tmp_path, seed=6).to(DEVICE)
    codes = [c.to(DEVICE) for c in random_codes(model, 4, seed=1)]
    labels = torch.tensor([0, 1, 2, 3], device=DEVICE)
    with torch.no_grad():
        ref = model.teacher_forced_logits(codes, labels, 4)[0].float()
        with torch.autocast(DEVICE.type, dtype=torch.bfloat16):
            low = model.teacher_forced_logits(codes, labels, 4)[0].float()
    assert ((low - ref).abs().max() / ref.std()).item() < 0.1


@pytest.mark.parametrize('variant', SAMPLING_VARIANTS, ids=lambda v: ','.join(v) or 'base')
def test_graphed_sampler_static_buffers_draw_the_eager_samples(tmp_path, variant):
    """GraphedSampler gives, for two batches of labels and seeds in a row, the codes, maps, labels and images of
    models.sampler.sample, and its second call leaves the first call's outputs as they were. On a CPU both run
    draw_pyramid without capture, so this checks only the static buffers (labels and uniforms copied in, the schedule
    fixed at construction, reuse across calls); the CUDA-graph capture and replay are checked when tests/gpu_check.py
    runs this test on a GPU."""
    model = random_generator(tmp_path, seed=8, **{k: (dict(v) if isinstance(v, dict) else v)
                                                 for k, v in variant.items()}).to(DEVICE)
    settings = SampleSettings(cfg=2.0, cfg_start_step=1, steps_per_scale=[1, 2, 3, 5] if len(model.sides) == 4 else 3,
                              top_k=20)
    graphed = GraphedSampler(model, 3, settings)
    results = []
    for seeds, labels in (([1, 2, 3], [0, 4, 2]), ([7, 8, 9], [1, 1, 3])):
        kwargs = dict(labels=torch.tensor(labels, device=DEVICE)) if model.class_cond else {}
        eager = model.sample(settings, **kwargs, batch_size=None if model.class_cond else 3, seeds=seeds, decode='top')
        results.append((eager, graphed(**kwargs, seeds=seeds)))
    for eager, fast in results:  # checked after both calls: the second must not overwrite the first's outputs
        for i, side in enumerate(model.sides):
            assert torch.equal(eager.codes[i], fast.codes[i]), f'codes differ at side {side}'
            assert torch.equal(eager.maps['step'][i], fast.maps['step'][i]), f'steps differ at side {side}'
        for name in ('prob', 'logp', 'entropy'):
            torch.testing.assert_close(eager.maps[name], fast.maps[name])
        if model.class_cond:
            assert fast.labels.tolist() == eager.labels.tolist()
        else:
            assert fast.labels is None
        torch.testing.assert_close(eager.images[-1], fast.images[-1])
    with pytest.raises(ValueError, match='batches of 3'):
        graphed(labels=[0, 1] if model.class_cond else None, seeds=[1, 2])


def test_a_one_scale_raster_model_draws_one_token_per_step_in_raster_order(tmp_path):
    """one_scale: the pyramid is the top grid alone; with the raster order and one token per step it is the
    plain autoregressive image model: step t draws position t."""
    model = random_generator(tmp_path, seed=9, one_scale=True, scan_order='raster')
    assert model.sides == [8] and model.num_positions == 64
    out = model.sample(SampleSettings(steps_per_scale=64), labels=[1], seeds=[3], decode='none')
    assert torch.equal(out.maps['step'][0][0], torch.arange(64).reshape(8, 8)) and out.num_steps == 64
    parallel = model.sample(SampleSettings(steps_per_scale=4), labels=[1], seeds=[3], decode='none')
    assert parallel.num_steps == 4 and torch.equal(parallel.maps['step'][0][0], torch.arange(64).reshape(8, 8) // 16)
