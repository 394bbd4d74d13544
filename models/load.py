"""Build a generator from a config in the published schema, and load published or project checkpoints."""
import json
import os

import yaml
from safetensors import SafetensorError, safe_open

from models.autoencoder import VQAutoencoder, load_autoencoder_weights, read_autoencoder_config
from models.autoencoder_config import AutoencoderConfig
from models.generator import CheckerboardGenerator
from models.generator_config import GeneratorConfig
from util.checkpoint import CheckpointError, load_checkpoint, load_matching_state_dict
from util.config import ConfigError
from util.provenance import file_sha256
from util.sharded_checkpoint import is_sharded_checkpoint, read_sharded


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


def checked_autoencoder_weights(files, checkpoint_path=None):
    """The path of model.autoenc's weights, which must exist and, where model.autoenc.sha256 is set, have that
    sha256; ConfigError naming the file and the way out otherwise."""
    weights = resolve_path(files.checkpoint_path, checkpoint_path)
    if weights is None or not os.path.isfile(weights):
        raise ConfigError(f'autoencoder checkpoint not found: {weights} (model.autoenc.checkpoint_path; '
                          'see pretrained_models/README.md, or set args.autoenc_train_config to train one)')
    if files.sha256 is not None and file_sha256(weights) != files.sha256:
        raise ConfigError(f'{weights} has sha256 {file_sha256(weights)[:16]}..., model.autoenc.sha256 expects '
                          f'{files.sha256[:16]}...: the file is corrupted or another one; restore it (git checkout '
                          f'{weights}), or retrain the autoencoder with args.autoenc_train_config')
    return weights


def build_generator(config: GeneratorConfig, autoenc_config: AutoencoderConfig = None,
                    load_autoencoder_checkpoint=True, checkpoint_path=None, device='cpu'):
    """A CheckerboardGenerator of a GeneratorConfig, on its frozen autoencoder.

    autoenc_config: the autoencoder's architecture (default: read from model.autoenc.config_path). Its weights
    come from model.autoenc.checkpoint_path when load_autoencoder_checkpoint. checkpoint_path: the generator
    checkpoint the config came from (its folder is searched first for the autoencoder's files)."""
    files = config.autoenc
    if autoenc_config is None:
        path = resolve_path(files.config_path, checkpoint_path)
        if path is None:
            raise ConfigError("missing key 'model.autoenc.config_path' (the autoencoder's architecture config)")
        autoenc_config = read_autoencoder_config(path, files.params)
    autoenc = VQAutoencoder(autoenc_config)
    if load_autoencoder_checkpoint:
        load_autoencoder_weights(autoenc, checked_autoencoder_weights(files, checkpoint_path))
    return CheckerboardGenerator(autoenc, config).to(device)


def checkpoint_config(checkpoint, checkpoint_path):
    """The config of a checkpoint: inside it (this project) or config.yaml beside it (published)."""
    if isinstance(checkpoint.get('config'), dict):
        return checkpoint['config']
    beside = os.path.join(os.path.dirname(os.path.abspath(checkpoint_path)), 'config.yaml')
    if not os.path.isfile(beside):
        raise CheckpointError(f'{checkpoint_path}: no config inside the checkpoint and no config.yaml beside it')
    with open(beside) as f:
        return yaml.safe_load(f)


def checkpoint_model_config(checkpoint, checkpoint_path, state):
    """The GeneratorConfig of a checkpoint; num_classes, when the config leaves it out (published), from the
    class embeddings in state. A config that does not fit is a CheckpointError naming the file."""
    model = dict(checkpoint_config(checkpoint, checkpoint_path).get('model') or {})
    if model.get('class_cond') and not model.get('num_classes') and 'class_embeddings.weight' in state:
        model['num_classes'] = state['class_embeddings.weight'].shape[0] - 1
    try:
        return GeneratorConfig.from_dict(model)
    except ConfigError as e:
        raise CheckpointError(f'{checkpoint_path}: its model config does not fit this code: {e}') from None


def read_safetensors(path):
    """A generator .safetensors file (tools/export_safetensors.py) as the checkpoint dict it was written from:
    its tensors under 'model' or 'model_ema' (metadata 'weights'), its config and autoencoder config."""
    try:
        with safe_open(path, framework='pt') as f:
            metadata = f.metadata() or {}
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f'{path}: not a readable .safetensors file ({str(e).splitlines()[0]})') from None
    if metadata.get('weights') not in ('model', 'model_ema') or 'config' not in metadata:
        raise CheckpointError(f'{path}: no generator config in its metadata (write it with '
                              'tools/export_safetensors.py)')
    return {metadata['weights']: state, 'config': json.loads(metadata['config']),
            'autoenc_config': json.loads(metadata.get('autoenc_config', 'null'))}


def read_checkpoint(path, allow_unsafe=False):
    """The dict of a generator checkpoint: a single file (load_checkpoint), a .safetensors export or a sharded
    checkpoint folder (.dcp, its weights whole)."""
    if os.fspath(path).endswith('.safetensors'):
        return read_safetensors(path)
    if is_sharded_checkpoint(path):
        return read_sharded(path)
    return load_checkpoint(path, allow_unsafe)


def load_generator(checkpoint_path, use_ema=False, device='cpu', allow_unsafe=False, checkpoint=None):
    """Load a published or project checkpoint (config inside or beside it), a .safetensors export or a sharded
    checkpoint folder; returns the model in eval mode. use_ema: the EMA weights (True), the training weights
    (False), or the EMA weights where the file has them (None). checkpoint: the file's dict (read_checkpoint)
    where the caller has read it already."""
    if checkpoint is None:
        checkpoint = read_checkpoint(checkpoint_path, allow_unsafe)
    if not isinstance(checkpoint, dict) or not ({'model', 'model_ema'} & set(checkpoint)):
        raise CheckpointError(f"{checkpoint_path}: not a generator checkpoint (no 'model' entry)")
    if use_ema is None:
        use_ema = checkpoint.get('model_ema') is not None
    key = 'model_ema' if use_ema else 'model'
    state = checkpoint.get(key)
    if state is None:
        flag = 'without --use_ema' if use_ema else 'with --use_ema'
        raise CheckpointError(f"{checkpoint_path}: no '{key}' weights in this file (load it {flag})")
    config = checkpoint_model_config(checkpoint, checkpoint_path, state)
    autoenc_config = checkpoint.get('autoenc_config')  # the published schema, stored by this project's trainer
    if autoenc_config is not None:
        autoenc_config = AutoencoderConfig.from_published(autoenc_config, checkpoint_path, config.autoenc.params)
    model = build_generator(config, autoenc_config, load_autoencoder_checkpoint=False,
                            checkpoint_path=checkpoint_path)
    load_matching_state_dict(model, dict(state), checkpoint_path)
    model.autoenc.quantize.initialized.fill_(True)
    return model.to(device).eval()
