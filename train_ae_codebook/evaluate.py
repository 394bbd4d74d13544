"""Evaluate a VQ autoencoder on the quantization pyramid: per-scale PSNR, codebook usage and perplexity, rFID
when Inception weights are at hand, and a picture of originals beside reconstructions at every scale.

    python -m train_ae_codebook.evaluate --checkpoint outputs/ae_shapes32/checkpoint-last.pth --data_path shapes32

--config defaults to the autoencoder_config.yaml beside the checkpoint. rFID uses torch-fidelity's Inception
(--inception_weights PATH, or its torch.hub cache); without weights it is skipped with one warning, nothing
is downloaded. Writes eval_recon.png and eval_metrics.json to --out_dir (default: the checkpoint's folder).
"""
import argparse
import json
import os
import sys

import torch
from torch.utils.data import DataLoader

from data.builtin import resolve_data_path
from data.image_folder import ImageFolderDataset
from models.autoencoder import load_autoencoder
from models.checkerboard import scale_sizes
from train_ae_codebook.build import spread_images, spread_subset
from train_ae_codebook.metrics import evaluate_pyramid, format_metrics, save_pyramid_picture
from util.atomic import atomic_write
from util.checkpoint import UNSAFE_FLAG
from util.config import ConfigError
from util.inception_features import TorchInception
from util.run_dir import exit_on_error

PICTURE_IMAGES = 8


def positive_int(text):
    """argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {text}')
    return value


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument('--checkpoint', required=True, help='autoencoder checkpoint (a layout load_autoencoder reads)')
    parser.add_argument('--config', help='autoencoder config yaml (default: autoencoder_config.yaml beside it)')
    parser.add_argument('--data_path', default='shapes32', help='ImageFolder root or a built-in dataset name')
    parser.add_argument('--builtin_root', default='data/builtin', help='folder where built-in datasets are generated')
    parser.add_argument('--split', default='val')
    parser.add_argument('--num_images', type=positive_int, default=1000, help='images spread over the split')
    parser.add_argument('--image_size', type=positive_int, help='default: the config\'s model.params.resolution')
    parser.add_argument('--scale_ratio', type=float, default=2.0, help='ratio between consecutive pyramid sides')
    parser.add_argument('--batch_size', type=positive_int, default=64)
    parser.add_argument('--num_workers', type=int, default=2)
    parser.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: GPU when available)")
    parser.add_argument('--inception_weights', help='torch-fidelity Inception weights (.pth) for rFID')
    parser.add_argument('--out_dir', help="where the picture and metrics go (default: the checkpoint's folder)")
    parser.add_argument(UNSAFE_FLAG, action='store_true', help='allow a full unpickle of a trusted checkpoint')
    return parser.parse_args(argv)


def inception_features(weights_path):
    """torch-fidelity's Inception from weights_path or its torch.hub cache; None (one warning) without either."""
    if weights_path is None:
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
        cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(URL_INCEPTION_V3))
        if not os.path.isfile(cached):
            print(f'warning: rFID skipped: no Inception weights at {cached}; pass --inception_weights PATH '
                  f'({URL_INCEPTION_V3})', file=sys.stderr)
            return None
        weights_path = cached
    return TorchInception(weights_path)


def evaluate(args):
    config = args.config or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), 'autoencoder_config.yaml')
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    autoencoder = load_autoencoder(config, args.checkpoint, device, allow_unsafe=args.unsafe_load)
    size = args.image_size or autoencoder.resolution
    if size % autoencoder.stride:
        raise ConfigError(f'--image_size {size} is not a multiple of the autoencoder stride {autoencoder.stride}')
    try:
        sides = scale_sizes(size, autoencoder.stride, args.scale_ratio)
    except ValueError as e:
        raise ConfigError(f'--scale_ratio / --image_size: {e}') from None
    dataset = ImageFolderDataset(resolve_data_path(args.data_path, args.builtin_root), size, args.split)
    subset = spread_subset(dataset, args.num_images)
    inception = inception_features(args.inception_weights)
    loader = DataLoader(subset, args.batch_size, num_workers=args.num_workers)
    results = evaluate_pyramid(autoencoder, (batch[0] for batch in loader), sides, inception)
    print(f'{args.checkpoint}: {len(subset)} images of {args.data_path}/{args.split} at {size} px, '
          f'{autoencoder.n_embed} codes')
    print(format_metrics(results))
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.checkpoint))
    os.makedirs(out_dir, exist_ok=True)
    images = spread_images(subset, PICTURE_IMAGES).to(device)
    picture = save_pyramid_picture(autoencoder, images, sides, os.path.join(out_dir, 'eval_recon.png'))
    with atomic_write(os.path.join(out_dir, 'eval_metrics.json'), 'w') as f:
        json.dump({str(k): v for k, v in results.items()}, f, indent=1)
    print(f'picture (per scale, top first: originals row, reconstructions row): {picture}')
    return results


def main(argv=None):
    args = parse_args(argv)
    with exit_on_error():
        evaluate(args)


if __name__ == '__main__':
    main()
