"""Write a generator checkpoint's weights with its config as one .safetensors file, which every command that
takes a checkpoint reads (models.load.load_generator).

    python -m tools.export_safetensors --checkpoint outputs/demo/checkpoint-last.pth --output demo.safetensors

One set of weights: the EMA weights where the checkpoint has them (or with --weights model the training ones);
the metadata holds which, the model config and the autoencoder's architecture. No optimizer state, no pickle.
"""
import argparse
import json

from safetensors.torch import save

from models.autoencoder import read_autoencoder_config
from models.load import checkpoint_config, resolve_path
from util.atomic import atomic_write
from util.checkpoint import UNSAFE_FLAG, CheckpointError, load_checkpoint
from util.run_dir import exit_on_error


def export(checkpoint_path, output, weights=None, allow_unsafe=False):
    """Write output; weights: 'model_ema', 'model' or None (the EMA weights where present)."""
    checkpoint = load_checkpoint(checkpoint_path, allow_unsafe)
    if not isinstance(checkpoint, dict) or 'model' not in checkpoint:
        raise CheckpointError(f"{checkpoint_path}: not a generator checkpoint (no 'model' entry)")
    weights = weights or ('model_ema' if checkpoint.get('model_ema') is not None else 'model')
    if checkpoint.get(weights) is None:
        raise CheckpointError(f"{checkpoint_path}: no '{weights}' weights in this checkpoint")
    config = checkpoint_config(checkpoint, checkpoint_path)
    autoenc_config = checkpoint.get('autoenc_config')
    if autoenc_config is None:  # a published checkpoint: the autoencoder's config file beside it
        files = config['model']['autoenc']
        autoenc_config = read_autoencoder_config(resolve_path(files['config_path'], checkpoint_path),
                                                 files.get('params')).to_published()
    state = {key: tensor.contiguous() for key, tensor in checkpoint[weights].items()}
    metadata = {'weights': weights, 'config': json.dumps(config), 'autoenc_config': json.dumps(autoenc_config)}
    with atomic_write(output) as f:
        f.write(save(state, metadata=metadata))
    print(f'wrote {output}: {len(state)} tensors ({weights}), config and autoencoder config in its metadata')


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True, help='a checkpoint-last.pth of this project')
    parser.add_argument('--output', required=True, help='the .safetensors file to write')
    parser.add_argument('--weights', choices=['model_ema', 'model'], help='default: the EMA weights where present')
    parser.add_argument(UNSAFE_FLAG, action='store_true', help='allow a full unpickle of a trusted checkpoint')
    args = parser.parse_args(argv)
    if not args.output.endswith('.safetensors'):
        parser.error(f'--output must end in .safetensors, got {args.output}')
    with exit_on_error():
        export(args.checkpoint, args.output, args.weights, args.unsafe_load)


if __name__ == '__main__':
    main()
