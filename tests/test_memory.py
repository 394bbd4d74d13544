"""tools/memory.py: the measured activation bytes are what autograd really keeps, and the per-GPU sums follow the
formula of its docstring."""
import yaml

from tools import memory


def tiny_config(tmp_path):
    dd = dict(ch=32, ch_mult=[1, 2, 2, 2], z_channels=32, num_res_blocks=1)
    (tmp_path / 'ae.yaml').write_text(yaml.safe_dump({'model': {'params': dict(embed_dim=4, n_embed=64,
                                                                              normalize=True, ddconfig=dd)}}))
    model = dict(img_size=32, scale_ratio=2, class_cond=True, num_classes=10, use_head_mlp=False,
                 autoenc=dict(config_path=str(tmp_path / 'ae.yaml'), checkpoint_path='unused.pth'),
                 llama_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=3))
    (tmp_path / 'tiny.yaml').write_text(yaml.safe_dump({'model': model}))
    return str(tmp_path / 'tiny.yaml')


def test_checkpointed_layers_keep_only_their_fp32_input(tmp_path):
    e = memory.estimate(tiny_config(tmp_path), 'fp32')
    tokens = 1 + 1 + 4 + 16  # class token and the scales 1x1, 2x2, 4x4
    assert e.layer_input == tokens * 32 * 4  # the residual stream entering each block, fp32
    assert e.per_layer > 10 * e.layer_input and e.outside > 0
    assert e.layers == 3 and e.params == memory.trainable_parameters(
        memory.build_generator(memory.read_config(tiny_config(tmp_path)), load_autoencoder_checkpoint=False))


def test_per_gpu_parts_follow_the_formula(tmp_path):
    e = memory.Estimate(params=1000, layer_params=100, outside=10.0, per_layer=5.0, layer_input=1.0, layers=4)
    ddp = e.per_gpu(gpus=8, batch=2, fsdp=False, checkpointing=False)
    assert sum(v for k, v in ddp.items() if k != 'activations') == 20 * 1000
    assert ddp['activations'] == 2 * (10 + 4 * 5)
    sharded = e.per_gpu(gpus=8, batch=2, fsdp=True, checkpointing=True)
    assert sharded['weights'] == 4 * 1000 / 8 and sharded['gathered layers'] == 4 * 100
    assert sharded['activations'] == 2 * (10 + 4 * 1 + 5)
