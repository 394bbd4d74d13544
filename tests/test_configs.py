"""One source of truth: the typed model and autoencoder configs hold every default once, resolution returns a
new config, sampling settings are checked where they are built, and only the project's own errors become
one-line exits."""
import inspect

import pytest
import torch
import yaml

import main as train_main
import main_sample
from conftest import write_tiny_run
from models.autoencoder import VQAutoencoder
from models.autoencoder_config import AutoencoderConfig
from models.generator import CheckerboardGenerator
from models.generator_config import AutoencoderFiles, GeneratorConfig, TransformerConfig
from models.load import build_generator
from models.sample_settings import SampleSettings
from models.transformer import Transformer
from models.vq_layers import Decoder, Encoder
from util.config import ConfigError, load_config

LLAMA = dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2)


def write_autoencoder_config(path):
    path.write_text(yaml.safe_dump({'model': {'params': dict(embed_dim=4, n_embed=32, ddconfig=dict(
        ch=32, ch_mult=[1, 2, 2], z_channels=32, num_res_blocks=1))}}))
    return str(path)


def test_a_generator_from_a_bare_config_equals_one_from_the_dataclass_defaults(tmp_path):
    """The YAML path (only the required keys) and the dataclass path give the same config and the same model."""
    ae = write_autoencoder_config(tmp_path / 'ae.yaml')
    from_yaml = GeneratorConfig.from_dict({'img_size': 32, 'llama_config': LLAMA, 'autoenc': {'config_path': ae}})
    from_class = GeneratorConfig(img_size=32, llama_config=TransformerConfig(**LLAMA),
                                 autoenc=AutoencoderFiles(config_path=ae))
    assert from_yaml == from_class
    torch.manual_seed(0)
    a = build_generator(from_yaml, load_autoencoder_checkpoint=False)
    torch.manual_seed(0)
    b = build_generator(from_class, load_autoencoder_checkpoint=False)
    assert a.config == b.config == from_class
    assert (a.sides, a.num_blocks_per_scale, a.scan_order) == ([1, 2, 4, 8], 8, 'checkerboard')
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert 'head_mlp.net.0.weight' in state_a  # use_head_mlp defaults to true, as published


def test_modules_take_their_settings_from_the_config_objects():
    """No second copy of a default: the modules built from the configs declare none of their own."""
    for cls in (CheckerboardGenerator, Transformer, VQAutoencoder, Encoder, Decoder):
        defaults = [name for name, p in inspect.signature(cls.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty]
        assert defaults == [], f'{cls.__name__} declares defaults {defaults}'


def test_the_published_autoencoder_schema_maps_onto_the_config_and_back():
    published = {'model': {'target': 'cbgen.autoencoder.VQModel',
                           'params': dict(embed_dim=8, n_embed=4096, normalize=True, requant_pyramid_levels=1,
                                          resolution=256, ddconfig={'norm_type': 'group', 'resolution': 256})}}
    config = AutoencoderConfig.from_published(published, 'published.yaml')
    assert config == AutoencoderConfig(n_embed=4096, embed_dim=8, normalize=True, requant_pyramid_levels=1)
    assert (config.ch, config.ch_mult, config.stride) == (128, (1, 1, 2, 2, 4), 16)  # LlamaGen VQ-16
    assert AutoencoderConfig.from_published(config.to_published(), 'written') == config


@pytest.mark.parametrize('model, message', [
    ({'img_size': 32, 'llama_config': LLAMA, 'scan_ordr': 'raster'},
     "unknown key 'model.scan_ordr' (did you mean 'scan_order'?)"),
    ({'img_size': 32, 'llama_config': {**LLAMA, 'hidden_sise': 8}},
     "unknown key 'model.llama_config.hidden_sise' (did you mean 'hidden_size'?)"),
    ({'img_size': 32}, "missing key 'model.llama_config'"),
    ({'img_size': '32', 'llama_config': LLAMA}, "model.img_size must be int, got '32'"),
    ({'img_size': 32, 'llama_config': {**LLAMA, 'num_attention_heads': 3}}, 'num_attention_heads 3 times an even'),
    ({'img_size': 32, 'llama_config': LLAMA, 'num_classes': 3}, 'model.num_classes is 3'),
])
def test_bad_model_configs_are_one_config_error(model, message):
    with pytest.raises(ConfigError) as e:
        GeneratorConfig.from_dict(model)
    assert message in str(e.value) and '\n' not in str(e.value)


def test_resolving_a_run_returns_a_new_config_and_changes_nothing(tmp_path):
    """num_classes comes from the data into the returned config; the given one is left as it was."""
    write_tiny_run(tmp_path, 'tiny.yaml', (2, 1))
    config = train_main.typed_config(load_config(['--config', str(tmp_path / 'tiny.yaml')], train_main.TRAIN_OPTIONS))
    before = train_main.config_record(config)
    resolved, root = train_main.resolve_run(config)
    assert train_main.config_record(config) == before and config['model'].num_classes == 0
    assert resolved['model'].num_classes == 10 and root == str(tmp_path / 'shapes')
    assert resolved['model'] == config['model'].replace(num_classes=10)


@pytest.mark.parametrize('settings, message', [
    (dict(cfg=-1.0), 'cfg must be a finite number >= 0, got -1.0'),
    (dict(cfg=float('nan')), 'cfg must be a finite number >= 0, got nan'),
    (dict(steps_per_scale=[1, 0]), 'steps_per_scale must be whole numbers >= 1, got (1, 0)'),
    (dict(top_p=0.0), 'top_p must be in (0, 1], got 0.0'),
    (dict(top_k=-2), 'top_k must be a whole number >= 0, got -2'),
    (dict(precision='fp8'), "precision must be one of fp32, tf32, bf16, got 'fp8'"),
])
def test_bad_sample_settings_are_refused_where_they_are_built(settings, message):
    with pytest.raises(ConfigError) as e:
        SampleSettings(**settings)
    assert message in str(e.value)


def test_sample_settings_check_the_schedule_and_the_device():
    settings = SampleSettings(steps_per_scale=[1, 4, 17])
    with pytest.raises(ConfigError, match='17 steps for the 4x4 scale, which has only 16 positions'):
        settings.check([1, 2, 4], 'cpu')
    assert SampleSettings(steps_per_scale=[1, 4, 16]).check([1, 2, 4], 'cpu') == 21
    with pytest.raises(ConfigError, match='tf32 is a GPU setting'):
        SampleSettings(precision='tf32').check([1, 2, 4], 'cpu')


def test_a_bug_inside_the_sampler_keeps_its_traceback(fixtures_dir, tmp_path, monkeypatch, capsys):
    """A ValueError raised deep in sampling is not mistaken for bad input: it propagates, no 'error:' line."""
    monkeypatch.chdir(tmp_path)

    def broken_filter(*args, **kwargs):
        raise ValueError('a bug inside the sampler')

    monkeypatch.setattr('models.sampler.filter_logits', broken_filter)
    with pytest.raises(ValueError, match='a bug inside the sampler'):
        main_sample.main(['--checkpoint', f'{fixtures_dir}/checkerboard-tiny-2x/checkpoint-last.pth',
                          '--num_images', '1'])
    assert 'error:' not in capsys.readouterr().err
