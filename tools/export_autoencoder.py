"""Keep an autoencoder's weights and architecture only (no optimizer state), as load_autoencoder reads them, and
print the sha256 a config's model.autoenc.sha256 checks. The demo's shipped tokenizer is made with:

    python -m train_ae_codebook.train --config train_ae_codebook/configs/demo.yaml
    python -m tools.export_autoencoder --checkpoint outputs/demo/autoenc/checkpoint-last.pth \\
        --output_dir pretrained_models/demo_autoencoder
"""
import argparse
import os

from models.autoencoder import load_autoencoder, save_autoencoder
from util.provenance import file_sha256
from util.run_dir import exit_on_error


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--checkpoint', required=True, help="an autoencoder checkpoint (train_ae_codebook's)")
    parser.add_argument('--config', help='its autoencoder_config.yaml (default: the one beside it)')
    parser.add_argument('--output_dir', required=True, help='writes checkpoint.pth and autoencoder_config.yaml')
    args = parser.parse_args(argv)
    config = args.config or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), 'autoencoder_config.yaml')
    with exit_on_error():
        weights, _ = save_autoencoder(load_autoencoder(config, args.checkpoint), args.output_dir)
    print(f'wrote {args.output_dir}: checkpoint.pth (sha256 {file_sha256(weights)}) and autoencoder_config.yaml')


if __name__ == '__main__':
    main()
