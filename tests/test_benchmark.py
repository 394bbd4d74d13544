"""tools/benchmark.py runs on a tiny config and prints its figures (a smoke test: no timing is asserted)."""
import pytest
import torch
import yaml

from models.sample_settings import SampleSettings
from models.transformer import KVCache
from test_generator import random_generator
from tools import benchmark


@pytest.mark.parametrize('one_scale, sides', [(False, '[1, 2, 4], 21 tokens/image'), (True, '[4], 16 tokens/image')])
def test_benchmark_prints_its_figures(tmp_path, capsys, one_scale, sides):
    dd = dict(ch=32, ch_mult=[1, 2, 2, 2], z_channels=32, num_res_blocks=1)
    (tmp_path / 'ae.yaml').write_text(yaml.safe_dump({'model': {'params': dict(embed_dim=4, n_embed=64,
                                                                              normalize=True, ddconfig=dd)}}))
    model = dict(img_size=32, scale_ratio=2, class_cond=True, use_head_mlp=False, one_scale=one_scale,
                 autoenc=dict(config_path='written/later.yaml', checkpoint_path='unused.pth'),
                 llama_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2))
    (tmp_path / 'tiny.yaml').write_text(yaml.safe_dump({'model': model}))
    benchmark.main(['--config', str(tmp_path / 'tiny.yaml'), '--autoenc_config', str(tmp_path / 'ae.yaml'),
                    '--precision', 'fp32', '--batch_size', '2', '3', '--graphed', '--train_batch_size', '2',
                    '--repeats', '1'])
    out = capsys.readouterr().out
    assert 'sampling batch 2 ' in out and 'sampling batch 3 ' in out and 'graphed sampler, batch 3' in out
    assert 'baseline with a growing KV cache (as published), batch 3' in out
    assert ('time per scale 4x4 ' if one_scale else 'time per scale 1x1 ') in out and '4x4 ' in out
    assert f'sides {sides}' in out
    assert '% of peak' in out and 'GFLOP counted' in out
    assert 'plain dense-mask forward/backward' in out


def test_growing_cache_baseline_draws_the_same_codes(tmp_path):
    """The published-style baseline differs from the sampler only in how its KV cache grows."""
    model = random_generator(tmp_path, seed=3)
    run = lambda: model.sample(SampleSettings(cfg=2.0), labels=[1, 2], seeds=[3, 4], decode='none')  # noqa: E731
    ours, baseline = run(), benchmark.growing_cache_baseline(model, run)()
    assert all(torch.equal(a, b) for a, b in zip(ours.codes, baseline.codes))
    assert isinstance(model.llama.new_caches(1, 4, torch.float32, 'cpu')[0], KVCache)  # the patch is undone
