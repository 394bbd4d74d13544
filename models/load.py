"""Build a generator from a config in the published schema, and load published or project checkpoints."""
import os

import yaml

from models.autoencoder import (VQAutoencoder, autoencoder_kwargs, load_autoencoder_weights,
                                read_autoencoder_config)
from models.generator import CheckerboardGenerator
from util.checkpoint import CheckpointError, load_checkpoint, load_matching_state_dict
from util.config import ConfigError, check_keys

MODEL_DEFAULTS = dict(scale_ratio=2, scale_min_size=1, class_cond=False, num_classes=0, num_blocks_per_scale=8,
                      uncond_training_prob=0.1, random_block_size=False, random_replace=0.0,
                      random_replace_sampled=False, use_head_mlp=True, num_mixing_layers=2,
                      scan_order='checkerboard', head_weights_l2_loss=1e-3)
REQUIRED = ('img_size', 'autoenc', 'llama_config')
LLAMA_KEYS = ('hidden_size', 'intermediate_size', 'num_attention_heads', 'num_hidden_layers', 'rms_norm_eps')
AUTOENC_KEYS = ('config_path', 'checkpoint_path', 'params')


def resolve_path(path, checkpoint_path=None):
    """A path from a config. Beside a checkpoint, the published folder layout comes first
    (pretrained_models/<model>/checkpoint next to pretrained_models/autoenc/...); otherwise the path is
    relative to the working directory, as published."""
    if path is not None and checkpoint_path is not None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(checkpoint_path)))
        beside = os.path.join(root, path.split('pretrained_models/', 1)[-1])
        if os.path.exists(beside):
            return beside
    return path


def check_model_config(model_cfg):
    """ConfigError (a ValueError) for an unknown or missing key of a `model:` section."""
    check_keys(model_cfg, list(MODEL_DEFAULTS) + list(REQUIRED), 'model')
    for key in REQUIRED:
        if key not in model_cfg:
            raise ConfigError(f"missing key 'model.{key}'")
    check_keys(model_cfg['llama_config'], LLAMA_KEYS, 'model.llama_config')
    check_keys(model_cfg['autoenc'], AUTOENC_KEYS, 'model.autoenc')


def build_generator(model_cfg, autoenc_config=None, load_autoencoder_checkpoint=True, checkpoint_path=None,
                    device='cpu'):
    """A CheckerboardGenerator from the `model:` section of a config.

    autoenc_config: the parsed autoencoder yaml (else read from autoenc.config_path). The autoencoder's
    weights come from autoenc.checkpoint_path when load_autoencoder_checkpoint."""
    check_model_config(model_cfg)
    ae_cfg = model_cfg['autoenc']
    if autoenc_config is None:
        config_path = resolve_path(ae_cfg.get('config_path'), checkpoint_path)
        if config_path is None:
            raise ValueError("missing key 'model.autoenc.config_path'")
        autoenc_config = read_autoencoder_config(config_path)
    autoenc = VQAutoencoder(**autoencoder_kwargs(autoenc_config, ae_cfg.get('config_path'), ae_cfg.get('params')))
    if load_autoencoder_checkpoint:
        weights = resolve_path(ae_cfg.get('checkpoint_path'), checkpoint_path)
        if weights is None or not os.path.isfile(weights):
            raise FileNotFoundError(f'autoencoder checkpoint not found: {weights} (model.autoenc.checkpoint_path; '
                                    'see pretrained_models/README.md)')
        load_autoencoder_weights(autoenc, weights)
    kwargs = {**MODEL_DEFAULTS, **{k: v for k, v in model_cfg.items() if k != 'autoenc'}}
    return CheckerboardGenerator(autoenc, **kwargs).to(device)


def checkpoint_config(checkpoint, checkpoint_path):
    """The config of a checkpoint: inside it (this project) or config.yaml beside it (published)."""
    if isinstance(checkpoint.get('config'), dict):
        return checkpoint['config']
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), 'config.yaml')
    if not os.path.isfile(beside):
        raise CheckpointError(f'{checkpoint_path}: no config inside the checkpoint and no config.yaml beside it')
    with open(beside) as f:
        return yaml.safe_load(f)


def load_generator(checkpoint_path, use_ema=False, device='cpu', allow_unsafe=False):
    """Load a published or project checkpoint (config inside or beside it); returns the model in eval mode."""
    checkpoint = load_checkpoint(checkpoint_path, allow_unsafe)
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint:
        raise CheckpointError(f"{checkpoint_path}: not a generator checkpoint (no 'model' entry)")
    config = checkpoint_config(checkpoint, checkpoint_path)
    model_cfg = dict(config['model'])
    key = 'model_ema' if use_ema else 'model'
    state = checkpoint.get(key)
    if state is None:
        raise CheckpointError(f"{checkpoint_path}: no '{key}' weights in this checkpoint")
    if model_cfg.get('class_cond') and 'num_classes' not in model_cfg and 'class_embeddings.weight' in state:
        model_cfg['num_classes'] = state['class_embeddings.weight'].shape[0] - 1
    model = build_generator(model_cfg, checkpoint.get('autoenc_config'), load_autoencoder_checkpoint=False,
                            checkpoint_path=checkpoint_path)
    load_matching_state_dict(model, dict(state), checkpoint_path)
    model.autoenc.quantize.initialized.fill_(True)
    return model.to(device).eval()
