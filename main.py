"""Train a checkerboard generator: python main.py --config configs/X.yaml [--key value ...]

One process on CPU or one GPU; `torchrun --nproc_per_node N main.py --config ...` for DDP.
`args:` keys of the config (and flags) are listed below; dotted flags override `model:` keys."""
import os
import sys
import time

from data.image_folder import BadImagesError
from data.token_cache import TokenCacheMismatch
from util.checkpoint import CheckpointError
from util.config import ConfigError, Option, load_config
from util.inline_eval import evaluate, latest_evaluation
from util.trainer import LAST, NonFiniteLoss, train

TRAIN_OPTIONS = {
    # data
    'data_path': Option(str, None, 'ImageNet-layout folder (train/<class>/*) or a built-in dataset name'),
    'builtin_root': Option(str, 'data/builtin', 'where built-in datasets are generated'),
    'num_workers': Option(int, 4, 'data loader processes per rank'),
    'create_cache': Option(bool, False, 'encode all 10 TenCrop views at every scale into the token cache'),
    'use_cache': Option(bool, False, 'train from the token cache instead of encoding images on the fly'),
    'cache_dir': Option(str, None, 'token cache folder (default: output_dir/token_cache)'),
    # optimisation
    'batch_size': Option(int, 64, 'images per process per optimizer step'),
    'grad_accum_steps': Option(int, 1, 'split each process batch into this many forward/backward passes'),
    'epochs': Option(int, 100, 'training epochs'),
    'max_steps': Option(int, 0, 'stop after this many optimizer steps (0: no limit)'),
    'lr': Option(float, None, 'learning rate (overrides blr)'),
    'blr': Option(float, 1e-4, 'base learning rate: lr = blr * global batch / 256 when lr is not set'),
    'min_lr': Option(float, 0.0, 'final learning rate of the cosine schedule'),
    'lr_schedule': Option(str, 'constant', 'constant, cosine or step'),
    'lr_step_epochs': Option(list, [], 'epochs at which the step schedule multiplies lr by lr_step_factor'),
    'lr_step_factor': Option(float, 0.1, 'lr multiplier of the step schedule'),
    'warmup_epochs': Option(float, 1.0, 'linear warmup from 0, in epochs'),
    'optimizer': Option(str, 'adamw', 'adamw (beta 0.9, 0.95; no decay on biases and 1-D parameters)'),
    'weight_decay': Option(float, 0.01, 'AdamW weight decay'),
    'clip_grad': Option(float, 0.0, 'clip the gradient norm to this value (0: off)'),
    'ema': Option(float, 0.0, 'EMA decay of model_ema (0: no EMA)'),
    'precision': Option(str, 'auto', 'auto (bf16 where the hardware has bf16 units), fp32 or bf16'),
    'seed': Option(int, 0, 'seed of data order, augmentation and training randomness'),
    'device': Option(str, None, 'cpu or cuda (default: cuda when available)'),
    'compile': Option(bool, False, 'torch.compile the transformer for training steps (up to two minutes of '
                                   'compiling, then 1.1-1.4x faster steps on a CPU; see docs/benchmarks.md)'),
    # checkpoints and logs
    'output_dir': Option(str, 'outputs/run', 'checkpoints, config.yaml, log.jsonl, samples'),
    'resume': Option(str, None, 'checkpoint file or folder to resume from (default: output_dir if it has one)'),
    'save_every_steps': Option(int, 0, 'also save checkpoint-last.pth every N steps (0: every epoch only)'),
    'keep_every_epochs': Option(int, 0, 'keep checkpoint-EPOCH.pth every N epochs (0: none)'),
    'log_every': Option(int, 20, 'steps between log.jsonl records'),
    'unsafe_load': Option(bool, False, 'allow checkpoints that need full unpickling (trusted files only)'),
    # inline evaluation
    'eval_freq': Option(int, 0, 'evaluate every N epochs and at the end (0: never)'),
    'eval_num_samples': Option(int, 1000, 'images generated for inline FID / IS / class consistency'),
    'eval_batch_size': Option(int, 64, 'sampling batch per process during evaluation'),
    'cfg': Option(float, 2.0, 'classifier-free guidance scale for inline evaluation'),
    'cfg_start_step': Option(int, 5, 'first sampling step that uses guidance'),
    'eval_steps_per_scale': Option(int, 4, 'checkerboard steps per scale when sampling'),
    'eval_temperature': Option(float, 1.0, 'sampling temperature'),
    'inception_weights': Option(str, None, 'local Inception weights for torch-fidelity (offline machines)'),
    'probe_epochs': Option(int, 20, 'training epochs of the class probe (class consistency, probe Frechet)'),
    'probe_max_images': Option(int, 20000, 'the class probe trains and is scored on at most this many train and '
                                           'val images each (seeded random subsets)'),
    'probe_image_size': Option(int, 64, 'the class probe sees images at min(img_size, this) pixels'),
    # the one-command demo
    'autoenc_train_config': Option(str, None, 'train_ae_codebook config that trains the autoencoder into the folder '
                                              'of model.autoenc.checkpoint_path (resumed or reused if there)'),
    'showcase_images': Option(int, 0, 'after training, sample this many images with maps figures and a GIF '
                                      '(main_sample.py) into output_dir/samples'),
}


def main(argv=None):
    try:
        config = load_config(argv, TRAIN_OPTIONS, __doc__.split('\n')[0])
        if config['args']['autoenc_train_config']:
            ensure_autoencoder(config)
        trainer = train(config, evaluate)
        if config['args']['showcase_images'] and trainer.dist.is_main:
            write_showcase(config, trainer)
        summary = latest_evaluation(trainer.log.path) if trainer.dist.is_main else None
        if summary:
            print(summary)
    except (ConfigError, CheckpointError, TokenCacheMismatch, BadImagesError, FileNotFoundError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    except NonFiniteLoss as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(1)


def ensure_autoencoder(config):
    """Train (or resume, or reuse) the autoencoder of model.autoenc with train_ae_codebook."""
    from train_ae_codebook import train as train_ae
    args, autoenc = config['args'], config['model']['autoenc']
    folder = os.path.dirname(autoenc['checkpoint_path']) or '.'
    done = os.path.isfile(autoenc['checkpoint_path'])
    print(f"autoencoder: {'checking' if done else 'training'} {autoenc['checkpoint_path']} with "
          f"python -m train_ae_codebook.train --config {args['autoenc_train_config']} --output_dir {folder}",
          file=sys.stderr)
    start = time.perf_counter()
    train_ae.main(['--config', args['autoenc_train_config'], '--output_dir', folder])
    print(f'autoencoder ready ({time.perf_counter() - start:.0f} s)', file=sys.stderr)


def write_showcase(config, trainer):
    """Samples with maps figures and the step-by-step GIF, from the final checkpoint (main_sample.py)."""
    import main_sample
    args = config['args']
    folder = os.path.join(args['output_dir'], 'samples')
    main_sample.main(['--checkpoint', os.path.join(args['output_dir'], LAST), '--output_dir', folder,
                      '--num_images', str(args['showcase_images']), '--cfg', str(args['cfg']),
                      '--cfg_start_step', str(args['cfg_start_step']), '--steps_per_scale',
                      str(args['eval_steps_per_scale']), '--temperature', str(args['eval_temperature']),
                      '--seed', str(args['seed'])] + (['--use_ema'] if args['ema'] else []))


if __name__ == '__main__':
    main()
