"""From a training config to objects: the args schema, the autoencoder (with its init block), the datasets.

Config layout: `model:` is the published autoencoder config's model section (`target`, `params`) plus an
`init:` block (checkpoint to start from, parts to freeze); `args:` holds the training settings (SCHEMA)."""
import torch

from data.builtin import resolve_data_path
from data.image_folder import ImageFolderDataset
from models.autoencoder import VQAutoencoder
from models.autoencoder_config import AutoencoderConfig
from models.checkerboard import scale_sizes
from util.checkpoint import load_checkpoint, load_matching_state_dict, unwrap_state_dict
from util.config import ConfigError, Option, check_keys

MODEL_KEYS = ('target', 'params', 'init')
INIT_OPTIONS = {
    'checkpoint': Option(str, None, 'autoencoder checkpoint to start from (its codebook is not used)'),
    'freeze_encoder': Option(bool, False, 'keep the encoder fixed'),
    'freeze_decoder': Option(bool, False, 'keep the decoder fixed'),
    'freeze_quant_convs': Option(bool, False, 'keep quant_conv and post_quant_conv fixed'),
}
# buffers and codebook of a start checkpoint that a new codebook replaces
CODEBOOK_KEYS = ('quantize.', 'cluster_usage_train')

SCHEMA = {
    'data_path': Option(str, 'shapes32', 'ImageFolder root (<root>/<split>/<class>/*) or a built-in dataset name'),
    'builtin_root': Option(str, 'data/builtin', 'where built-in datasets are generated'),
    'val_split': Option(str, 'val', "validation split under data_path ('' for none)"),
    'output_dir': Option(str, 'outputs/ae', 'checkpoint, autoencoder_config.yaml, log and pictures go here'),
    'resume': Option(str, '', 'checkpoint to resume from (default: output_dir/checkpoint-last.pth if present)'),
    'steps': Option(int, 10000, 'optimizer steps in all, the statistics-gathering steps included'),
    'batch_size': Option(int, 32, 'images per step and rank'),
    'lr': Option(float, 1e-4, 'Adam learning rate'),
    'adam_betas': Option(list, [0.5, 0.9], 'Adam betas'),
    'min_lr_ratio': Option(float, 1.0, 'cosine decay to lr * min_lr_ratio after quantize_iter_start (1: constant)'),
    'scale_ratio': Option(float, 2.0, 'ratio between consecutive pyramid sides'),
    'quantize_iter_start': Option(int, 1000, 'steps that gather latent statistics before the codebook is drawn'),
    'p_train_random_scale': Option(float, 0.9, 'probability that a step trains at a random pyramid scale'),
    'beta': Option(float, 0.001, 'commitment weight of the VQ loss'),
    'usage_alpha': Option(float, 0.01, 'EMA factor of the codebook usage'),
    'dead_threshold': Option(float, 1e-4, 'a code is dead when its usage share is below dead_threshold / V'),
    'reinit_every': Option(int, 1000, 're-initialize dead codes every this many steps (0: never)'),
    'seed': Option(int, 0, 'seed of data order, scale choice and codebook draws'),
    'num_workers': Option(int, 2, 'DataLoader workers'),
    'device': Option(str, None, "'cpu', 'cuda' or None (GPU when available)"),
    'threads': Option(int, None, "torch CPU threads (None: torch's default; 1 is fastest on a busy machine)"),
    'log_every': Option(int, 50, 'steps between log records'),
    'val_every': Option(int, 1000, 'steps between validations (0: only at the end)'),
    'val_images': Option(int, 256, 'validation images (spread over the split)'),
    'save_every': Option(int, 1000, 'steps between checkpoints'),
}


def build_autoencoder(model_cfg, source):
    """(VQAutoencoder, init options with defaults) of a config's model section; ConfigError if bad."""
    check_keys(model_cfg, MODEL_KEYS, 'model')
    params = model_cfg.get('params')
    if not isinstance(params, dict):
        raise ConfigError(f'{source}: model.params is required (the published autoencoder schema)')
    autoencoder = VQAutoencoder(AutoencoderConfig.from_published({'model': {'params': params}}, source))
    init = dict(model_cfg.get('init') or {})
    check_keys(init, INIT_OPTIONS, 'model.init')
    init = {key: init.get(key, option.default) for key, option in INIT_OPTIONS.items()}
    for key, option in INIT_OPTIONS.items():
        if init[key] is not None and not isinstance(init[key], option.type):
            raise ConfigError(f'{source}: model.init.{key} must be {option.type.__name__}, got {init[key]!r}')
    frozen = [key for key in INIT_OPTIONS if key.startswith('freeze_') and init[key]]
    if frozen and not init['checkpoint']:
        raise ConfigError(f'{source}: model.init.{frozen[0]} needs model.init.checkpoint (frozen random weights)')
    if autoencoder.resolution % autoencoder.stride:
        raise ConfigError(f'{source}: model.params.resolution {autoencoder.resolution} is not a multiple of '
                          f'the stride {autoencoder.stride}')
    return autoencoder, init


def check_args(args):
    """ConfigError for training settings that cannot work."""
    for key in ('steps', 'batch_size', 'quantize_iter_start', 'log_every', 'save_every', 'val_images'):
        if args[key] < 1:
            raise ConfigError(f'args.{key} must be >= 1, got {args[key]}')
    if args['quantize_iter_start'] >= args['steps']:
        raise ConfigError(f"args.quantize_iter_start ({args['quantize_iter_start']}) must be below args.steps "
                          f"({args['steps']}): the codebook is drawn after the statistics-gathering steps")
    for key, low, high in (('p_train_random_scale', 0, 1), ('usage_alpha', 1e-9, 1), ('min_lr_ratio', 0, 1)):
        if not low <= args[key] <= high:
            raise ConfigError(f'args.{key} must be in [{low}, {high}], got {args[key]}')
    if len(args['adam_betas']) != 2:
        raise ConfigError(f"args.adam_betas must be two numbers, got {args['adam_betas']}")


def pyramid_sides(autoencoder, scale_ratio):
    """Token-grid sides of the autoencoder's pyramid at its resolution, ascending; ConfigError if impossible."""
    try:
        return scale_sizes(autoencoder.resolution, autoencoder.stride, scale_ratio)
    except ValueError as e:
        raise ConfigError(f'args.scale_ratio / model.params.resolution: {e}') from None


def load_start_weights(autoencoder, path):
    """Encoder, decoder and quant convs from a start checkpoint (any layout load_autoencoder reads);
    the codebook and its buffers stay new."""
    sd = unwrap_state_dict(load_checkpoint(path), path, prefix='autoenc.')
    own = autoencoder.state_dict()
    sd = {k: v for k, v in sd.items() if not k.startswith(CODEBOOK_KEYS)}
    sd.update({k: v for k, v in own.items() if k.startswith(CODEBOOK_KEYS)})
    load_matching_state_dict(autoencoder, sd, path)


def frozen_modules(autoencoder, init):
    """The submodules that the init block freezes."""
    ae = autoencoder
    parts = {'freeze_encoder': [ae.encoder], 'freeze_decoder': [ae.decoder],
             'freeze_quant_convs': [ae.quant_conv, ae.post_quant_conv]}
    return [m for key, modules in parts.items() if init[key] for m in modules]


def build_datasets(args, image_size, seed):
    """(train, val or None) ImageFolderDatasets at image_size; ConfigError if the data is unusable."""
    try:
        root = resolve_data_path(args['data_path'], args['builtin_root'])
        train = ImageFolderDataset(root, image_size, 'train', seed=seed)
        val = ImageFolderDataset(root, image_size, args['val_split'], seed=seed) if args['val_split'] else None
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return train, val


def spread_subset(dataset, n):
    """n items spread evenly over the dataset (its classes are contiguous), as a Subset."""
    indices = torch.linspace(0, len(dataset) - 1, min(n, len(dataset))).long().tolist()
    return torch.utils.data.Subset(dataset, indices)


def spread_images(dataset, n):
    """The images of n items spread evenly over the dataset, (n, 3, H, W)."""
    return torch.stack([item[0] for item in spread_subset(dataset, n)])
