"""Train a checkerboard generator: python main.py --config configs/X.yaml [--key value ...]

One process on CPU or one GPU; `torchrun --nproc_per_node N main.py --config ...` for DDP, or with --fsdp
for FSDP2 (util/sharding.py; sharded checkpoints: util/sharded_checkpoint.py). The loop: data (images or the token
cache), DDP or FSDP, bf16 autocast, activation checkpointing, AdamW, timm schedule and EMA, gradient accumulation
and clipping, atomic checkpoints, exact resume, inline evaluation (evaluation.sample_quality.evaluate_generator).
`args:` keys of the config (and flags) are listed below; dotted flags override `model:` keys."""
import argparse
import contextlib
import math
import os
import random
import resource
import sys
import time

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import main_sample
from data.builtin import resolve_data_path
from data.image_folder import ImageFolderDataset, scan_image_folder
from data.token_cache import TokenCacheDataset, autoencoder_fingerprint, create_token_cache
from evaluation import sample_quality
from models import build_generator, load_generator
from models.autoencoder import read_autoencoder_config
from models.generator_config import AutoencoderFiles, GeneratorConfig
from models.load import checked_autoencoder_weights, resolve_path
from models.sample_batches import balanced_labels
from models.sample_settings import SampleSettings
from train_ae_codebook import train as train_ae
from util import distributed
from util.batches import GlobalBatchSampler
from util.checkpoint import CheckpointError, check_same_model, load_checkpoint, load_resumed_weights, save_checkpoint
from util.config import ConfigError, Option, config_text, load_config, write_yaml
from util.precision import PRECISIONS, autocast, check_precision, resolve_precision
from util.provenance import file_sha256, machine
from util.run_dir import (CONFIG_FILE, LAST_CHECKPOINT, LOG_FILE, SHARDED_LAST_CHECKPOINT, check_finite,
                          exit_on_error, find_resume, kept_checkpoint, last_checkpoint)
from util.run_log import RunLog
from util.schedule import OPTIMIZERS, SCHEDULES, base_lr, build_optimizer, build_scheduler
from util.sharded_checkpoint import is_sharded_checkpoint, load_sharded, read_meta, save_sharded
from util.sharding import full_state_dict, shard_generator, total_norm

AUTOENC_PATHS = ('autoenc.config_path', 'autoenc.checkpoint_path')  # may move between runs: not the model

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
    'optimizer': Option(str, 'adamw', f'one of {", ".join(OPTIMIZERS)} (adamw: betas 0.9, 0.95; no decay on biases '
                                      'and 1-D parameters)'),
    'weight_decay': Option(float, 0.01, 'AdamW weight decay'),
    'clip_grad': Option(float, 0.0, 'clip the gradient norm to this value (0: off)'),
    'ema': Option(float, 0.0, 'EMA decay of model_ema (0: no EMA)'),
    'precision': Option(str, 'auto', 'auto (bf16 where the hardware has bf16 units) or one of '
                                     + ', '.join(PRECISIONS)),
    'seed': Option(int, 0, 'seed of data order, augmentation and training randomness'),
    'device': Option(str, None, 'cpu or cuda (default: cuda when available)'),
    'compile': Option(bool, False, 'torch.compile the transformer for training steps (up to two minutes of '
                                   'compiling, then 1.1-1.4x faster steps on a CPU; see docs/benchmarks.md)'),
    'fsdp': Option(bool, False, 'shard weights, gradients, optimizer state and EMA over the torchrun processes '
                                '(FSDP2; one process alone without torchrun); checkpoints become sharded '
                                'checkpoint-last.dcp folders'),
    'grad_checkpointing': Option(bool, False, 'recompute each transformer block in the backward pass: '
                                              'activation memory of one block instead of all, one more forward'),
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
    'autoenc_train_config': Option(str, None, 'train_ae_codebook config that trains the autoencoder (with this '
                                              "run's seed, into its output_dir; resumed or reused if there) and "
                                              'replaces model.autoenc for this run'),
    'showcase_images': Option(int, 0, 'after training, sample this many images with maps figures and a GIF '
                                      '(main_sample.py) into output_dir/samples'),
}


POSITIVE = ('batch_size', 'grad_accum_steps', 'epochs', 'log_every', 'eval_num_samples', 'eval_batch_size',
            'eval_steps_per_scale', 'probe_epochs', 'probe_max_images', 'probe_image_size')
NOT_NEGATIVE = ('max_steps', 'min_lr', 'warmup_epochs', 'weight_decay', 'clip_grad', 'seed', 'num_workers',
                'save_every_steps', 'keep_every_epochs', 'eval_freq', 'showcase_images')


def check_args(args):
    """ConfigError (one line naming the key and its value) for an `args:` value that cannot work; needs no
    files and does no work."""
    def fail(key, requirement):
        raise ConfigError(f'args.{key} must be {requirement}, got {args[key]!r}')

    for key in POSITIVE:
        if args[key] is not None and not args[key] >= 1:
            fail(key, '>= 1')
    for key in NOT_NEGATIVE:
        if args[key] is None or not (math.isfinite(args[key]) and args[key] >= 0):
            fail(key, 'a finite number >= 0')
    for key in ('lr', 'blr'):
        if args[key] is not None and not (math.isfinite(args[key]) and args[key] > 0):
            fail(key, 'a finite number > 0')
    if args['lr'] is None and args['blr'] is None:
        raise ConfigError('set args.lr or args.blr')
    if args['batch_size'] % args['grad_accum_steps']:
        raise ConfigError(f"args.batch_size {args['batch_size']} is not divisible by args.grad_accum_steps "
                          f"{args['grad_accum_steps']}")
    if not 0 <= args['ema'] < 1:
        fail('ema', 'in [0, 1)')
    if args['lr_schedule'] not in SCHEDULES:
        fail('lr_schedule', f'one of {", ".join(SCHEDULES)}')
    if args['optimizer'] not in OPTIMIZERS:
        fail('optimizer', f'one of {", ".join(OPTIMIZERS)} (the optimizers this trainer implements)')
    if not all(isinstance(e, (int, float)) and e >= 0 for e in args['lr_step_epochs']):
        fail('lr_step_epochs', 'a list of epochs >= 0')
    try:
        check_precision(args['precision'], args['device'] or 'cpu', allow_auto=True)
        if args['device'] is not None:
            torch.device(args['device'])
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f'args.precision / args.device: {e}') from None
    sample_settings(args, 'fp32')  # the inline evaluation's sampling settings: ConfigError if they cannot work


def typed_config(raw):
    """The run's config from load_config's: {'model': GeneratorConfig, 'args': checked dict}. A new object;
    a problem is one ConfigError."""
    check_args(raw['args'])
    return {'model': GeneratorConfig.from_dict(raw['model']), 'args': raw['args']}


def resolve_run(config):
    """(the config with what the files decide filled in, the dataset folder) of a typed config: the data must
    be there, model.num_classes is the number of classes of its train split (a config that sets another is a
    ConfigError), the autoencoder's files must exist. The given config is not changed."""
    args, model = config['args'], config['model']
    path = model.autoenc.config_path
    if path is None or not os.path.isfile(resolve_path(path)):
        raise ConfigError(f'autoencoder file not found: model.autoenc.config_path = {path} '
                          '(see pretrained_models/README.md, or set args.autoenc_train_config to train one)')
    checked_autoencoder_weights(model.autoenc)
    if args['compile'] and not distributed.uses_cuda(args['device']):
        check_cpu_compiler()
    if args['data_path'] is None:
        raise ConfigError('args.data_path is required (an ImageNet-layout folder or a built-in dataset name)')
    root = resolve_data_path(args['data_path'], args['builtin_root'])
    classes, _ = scan_image_folder(root, 'train')
    if model.class_cond and model.num_classes not in (0, len(classes)):
        raise ConfigError(f'model.num_classes is {model.num_classes} but {root}/train has {len(classes)} classes')
    if model.class_cond:
        model = model.replace(num_classes=len(classes))
    return {'model': model, 'args': args}, root


def config_record(config):
    """A typed config as plain types: what checkpoints, config.yaml and the sweep record."""
    return {'model': config['model'].to_dict(), 'args': config['args']}


def check_cpu_compiler():
    """torch.compile on a CPU builds C++ kernels: ConfigError unless inductor finds a C++ compiler."""
    from torch._inductor import cpp_builder
    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:
        raise ConfigError(f'--compile on a CPU needs a C++ compiler (g++, or set CXX) and none was found '
                          f'({type(e).__name__}); install one or leave compile off') from None


def rng_states(train_gen):
    """The generators the run draws from: the shared training generator and torch's global one."""
    return {'train': train_gen.get_state(), 'torch': torch.get_rng_state()}


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """State of one run: model, EMA, optimizer, schedule, data position."""

    def __init__(self, config, data_root, dist, resume=None):
        """config: resolved (resolve_run); resume: (path, checkpoint) of this run to continue, its config already
        checked (read_resume)."""
        self.config, self.args, self.dist = config, config['args'], dist
        args = self.args
        self.device = dist.device
        self.precision = resolve_precision(args['precision'], self.device)
        self.sample_settings = sample_settings(args, self.precision)
        torch.manual_seed(args['seed'] + dist.rank)
        np.random.seed(args['seed'] + dist.rank)
        random.seed(args['seed'] + dist.rank)
        self.model = build_generator(config['model'], device=self.device)
        self.model.llama.grad_checkpointing = args['grad_checkpointing']
        self.sharded_resume = resume is not None and is_sharded_checkpoint(resume[0])
        if resume is not None and not self.sharded_resume:  # before anything is written: a mismatch is one line
            load_resumed_weights(self.model, resume[1]['model'], resume[0])
        files = config['model'].autoenc
        self.autoenc_config = read_autoencoder_config(resolve_path(files.config_path), files.params)
        self.autoenc_sha256 = file_sha256(resolve_path(files.checkpoint_path))
        self.data_root = data_root
        self.dataset = self.build_dataset()
        self.sampler = GlobalBatchSampler(len(self.dataset), args['batch_size'], self.dist.rank,
                                          self.dist.world_size, args['seed'])
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler,
                                                  num_workers=args['num_workers'],
                                                  pin_memory=self.device.type == 'cuda')
        # the EMA of sharded weights is sharded the same way (and updated tensor by tensor: a foreach update
        # cannot mix the sharded tensors with the whole ones of the frozen autoencoder)
        self.ema = ModelEmaV3(self.model, decay=args['ema'], foreach=not args['fsdp']) if args['ema'] > 0 else None
        if args['fsdp']:
            for module in [self.model] + ([self.ema.module] if self.ema else []):
                shard_generator(module, self.precision)
        self.lr = base_lr(args, self.sampler.global_batch)
        self.optimizer = build_optimizer(args['optimizer'], self.model, self.lr, args['weight_decay'])
        self.scheduler = build_scheduler(self.optimizer, args, self.sampler.batches_per_epoch)
        if args['compile']:
            self.model.compile_for_training()
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.dist.local_rank]
                                            if self.device.type == 'cuda' else None)
                    if self.dist.enabled and not args['fsdp'] else self.model)
        self.train_gen = torch.Generator(self.device).manual_seed(args['seed'])  # same on every rank
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.earlier_seconds = 0.0  # training wall time of the sessions before this one (None: not recorded)
        self.earlier_sessions = []  # where and how the sessions before this one trained (train_sessions)
        if resume is not None:
            self.resume(*resume)
        self.log = RunLog(args['output_dir'], enabled=dist.is_main, name=LOG_FILE)
        self.log.truncate_after(self.step)

    def say(self, message):
        if self.dist.is_main:
            tqdm.write(message)

    def build_dataset(self):
        args = self.args
        if args['create_cache'] or args['use_cache']:
            cache_dir = args['cache_dir'] or os.path.join(args['output_dir'], 'token_cache')
            sides, size = self.model.sides, self.model.img_size
            if args['create_cache']:
                views = ImageFolderDataset(self.data_root, size, all_views=True)
                bar = tqdm(total=len(views), desc='token cache', disable=not self.dist.is_main, unit='img')
                create_token_cache(cache_dir, views, self.model.autoenc, sides, size, self.model.vocab_size,
                                   self.device, batch_size=args['batch_size'], num_workers=args['num_workers'],
                                   rank=self.dist.rank, world_size=self.dist.world_size,
                                   barrier=distributed.barrier,
                                   on_batch=lambda done, total: bar.update(done - bar.n))
                bar.close()
            if args['use_cache']:
                return TokenCacheDataset(cache_dir, autoencoder_fingerprint(self.model.autoenc), sides, size,
                                         seed=args['seed'])
        return ImageFolderDataset(self.data_root, self.model.img_size, seed=args['seed'],
                                  bad_list_path=os.path.join(args['output_dir'], 'bad_images.txt')
                                  if self.dist.is_main else None)

    # ---- checkpoints --------------------------------------------------------------------------------

    def meta(self):
        """The run's state but for weights and optimizer state."""
        return {'epoch': self.epoch, 'scaler': {}, 'args': argparse.Namespace(**self.args),
                'step': self.step, 'batch_in_epoch': self.batch_in_epoch,
                'scheduler': self.scheduler.state_dict(), 'rng': rng_states(self.train_gen),
                'config': config_record(self.config), 'autoenc_config': self.autoenc_config.to_published(),
                'autoenc_sha256': self.autoenc_sha256, 'train_seconds': self.train_seconds(),
                'train_sessions': self.earlier_sessions + [self.session_record]}

    def state(self):
        """The single-file checkpoint."""
        return {'model': self.model.state_dict(), 'model_ema': self.ema.module.state_dict() if self.ema else None,
                'optimizer': self.optimizer.state_dict(), **self.meta()}

    def train_seconds(self):
        """Wall time spent training up to now, every session of a resumed run summed (the steps a stop lost are
        not counted); None when resumed from a checkpoint that did not record it."""
        if self.earlier_seconds is None:
            return None
        return self.earlier_seconds + time.perf_counter() - self.session_start

    def save(self, keep=False):
        """The last checkpoint (and a numbered keep) with the config beside it, atomically: rank 0 writes a single
        file, or under fsdp every rank its shards."""
        out = self.args['output_dir']
        if self.args['fsdp']:
            meta, ema = self.meta(), self.ema.module if self.ema else None
            for name in [SHARDED_LAST_CHECKPOINT] + ([kept_checkpoint(self.epoch, sharded=True)] if keep else []):
                save_sharded(os.path.join(out, name), self.model, self.optimizer, ema, meta)
        elif self.dist.is_main:
            state = self.state()
            save_checkpoint(state, os.path.join(out, LAST_CHECKPOINT))
            if keep:
                save_checkpoint(state, os.path.join(out, kept_checkpoint(self.epoch)))
        if self.dist.is_main:
            write_yaml(config_record(self.config), os.path.join(out, CONFIG_FILE))
        distributed.barrier()

    def resume(self, path, ck):
        """Optimizer, schedule, EMA, position and random states of a checkpoint (a single file's weights are
        loaded; a sharded checkpoint's weights are loaded here, resharded to this run)."""
        if self.sharded_resume:
            load_sharded(path, self.model, self.optimizer, self.ema.module if self.ema else None)
        else:
            if self.ema is not None:
                self.ema.module.load_state_dict(ck['model_ema'] if ck.get('model_ema') else ck['model'])
            self.optimizer.load_state_dict(ck['optimizer'])
        self.scheduler.load_state_dict(ck['scheduler'])
        self.step, self.epoch, self.batch_in_epoch = ck['step'], ck['epoch'], ck['batch_in_epoch']
        self.earlier_seconds = ck.get('train_seconds')
        # a checkpoint from before sessions were recorded: one session of unknown machine and precision
        self.earlier_sessions = list(ck.get('train_sessions') or [
            {'first_step': 0, 'machine': None, 'precision': None, 'processes': None}])
        self.train_gen.set_state(ck['rng']['train'].to(self.train_gen.get_state().device))
        if self.dist.world_size == 1:  # rank 0's global state is saved; other ranks keep their seeding
            torch.set_rng_state(ck['rng']['torch'])
        self.say(f'resumed from {path} at epoch {self.epoch}, step {self.step}')

    # ---- one optimizer step -------------------------------------------------------------------------

    def train_step(self, batch):
        """Forward/backward over the accumulation micro-batches, clip, step. Returns stats (floats)."""
        inputs, labels = batch[0], batch[1]
        accum = self.args['grad_accum_steps']
        micro = self.args['batch_size'] // accum
        first, total = self.sampler.rows()
        stats_sum = {}
        for j in range(accum):
            part = slice(j * micro, (j + 1) * micro)
            x = ([c[part].to(self.device, non_blocking=True) for c in inputs] if isinstance(inputs, list)
                 else inputs[part].to(self.device, non_blocking=True))
            y = labels[part].to(self.device)
            defer_sync = self.dist.enabled and j < accum - 1  # reduce gradients once, on the last part
            if self.args['fsdp']:
                self.model.set_requires_gradient_sync(not defer_sync)
            with self.ddp.no_sync() if defer_sync and not self.args['fsdp'] else contextlib.nullcontext(), \
                    autocast(self.device, self.precision):
                loss, stats = self.ddp(x, y, self.train_gen, (first + j * micro, total))
            (loss / accum).backward()
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v.float() / accum
        check_finite(stats_sum['loss'].item(), self.step + 1, self.args['output_dir'], self.device)
        clip = self.args['clip_grad'] or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return {**{k: v.item() for k, v in stats_sum.items()}, 'grad_norm': total_norm(grad_norm).item()}

    # ---- the loop -----------------------------------------------------------------------------------

    def run(self):
        """Train to args.epochs (or args.max_steps), evaluating every eval_freq epochs and at the end."""
        args = self.args
        tokens_per_image = self.model.num_positions
        self.session_start = time.perf_counter()
        self.session_record = {'first_step': self.step, 'machine': machine(self.device), 'precision': self.precision,
                               'processes': self.dist.world_size}
        self.say(f'{len(self.dataset)} training items, global batch {self.sampler.global_batch} '
                 f'({self.dist.world_size} process(es)), {self.sampler.batches_per_epoch} steps/epoch, '
                 f'lr {self.lr:.3g}, precision {self.precision}, device {self.device}')
        while self.epoch < args['epochs']:
            self.sampler.set_epoch(self.epoch, self.batch_in_epoch)
            self.dataset.set_epoch(self.epoch)
            bar = tqdm(total=self.sampler.batches_per_epoch, initial=self.batch_in_epoch,
                       desc=f"epoch {self.epoch + 1}/{args['epochs']}", disable=not self.dist.is_main,
                       dynamic_ncols=True)
            tick, done_images = time.perf_counter(), 0
            for batch in self.loader:
                stats = self.train_step(batch)
                self.batch_in_epoch += 1
                done_images += self.sampler.global_batch
                bar.update(1)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", lr=f"{self.optimizer.param_groups[0]['lr']:.2e}")
                if self.step % args['log_every'] == 0 or self.batch_in_epoch == self.sampler.batches_per_epoch:
                    seconds = time.perf_counter() - tick
                    record = distributed.all_reduce_mean(stats, self.device)
                    record.update(epoch=self.epoch, lr=self.optimizer.param_groups[0]['lr'],
                                  images_per_s=done_images / seconds,
                                  tokens_per_s=done_images * tokens_per_image / seconds,
                                  peak_memory_mb=peak_memory_mb(self.device))
                    self.log.write(self.step, record)
                    tick, done_images = time.perf_counter(), 0
                if args['save_every_steps'] and self.step % args['save_every_steps'] == 0:
                    self.save()
                if args['max_steps'] and self.step >= args['max_steps']:
                    bar.close()
                    self.save()
                    self.say(f"stopped at max_steps {args['max_steps']}; checkpoint in {args['output_dir']}")
                    return
            bar.close()
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            keep = bool(args['keep_every_epochs']) and self.epoch % args['keep_every_epochs'] == 0
            self.save(keep=keep)
            if args['eval_freq'] and (self.epoch % args['eval_freq'] == 0 or self.epoch == args['epochs']):
                self.evaluate()
        self.say(f"training done: {self.epoch} epochs, {self.step} steps; checkpoints in {args['output_dir']}")

    def evaluate(self):
        """Inline evaluation with the EMA weights (or the model): samples, a grid and metrics in the log."""
        args = self.args
        model = (self.ema.module if self.ema is not None else self.model).eval()
        if args['fsdp']:  # the sampler calls submodules one by one: it runs on a whole copy
            weights = full_state_dict(model)
            model = build_generator(self.config['model'], device=self.device).eval()
            model.load_state_dict(weights)
        folder = os.path.join(args['output_dir'], f'eval_epoch{self.epoch:04d}')
        record = sample_quality.evaluate_generator(
            model, self.sample_settings, self.dist, self.data_root, folder, num_samples=args['eval_num_samples'],
            batch_size=args['eval_batch_size'], seed=args['seed'],
            probe_path=os.path.join(args['output_dir'], 'class_probe.pth'), probe_epochs=args['probe_epochs'],
            probe_max_images=args['probe_max_images'], probe_image_size=args['probe_image_size'],
            inception_weights=args['inception_weights'], log=self.say)
        self.model.train()
        if record is not None:
            self.log.write(self.step, {sample_quality.EVAL_PREFIX + k: v for k, v in record.items()}
                           | {'epoch': self.epoch})
            self.say(f'eval at epoch {self.epoch}: {sample_quality.metrics_text(record)} (grid: {folder}/grid.png)')

    def close(self):
        self.log.close()


def sample_settings(args, precision):
    """The SampleSettings of inline evaluation and the showcase, from the training args and a resolved
    precision."""
    return SampleSettings(cfg=args['cfg'], cfg_start_step=args['cfg_start_step'],
                          steps_per_scale=args['eval_steps_per_scale'], temperature=args['eval_temperature'],
                          precision=precision)


def read_resume(config):
    """(path, checkpoint) to resume from, checked against the config (a CheckpointError names the first
    mismatched setting and the way out), or None for a fresh run."""
    args = config['args']
    path = find_resume(args['output_dir'], args['resume'])
    if path is None:
        return None
    if is_sharded_checkpoint(path):
        state = read_meta(path)  # its weights are loaded by the Trainer, resharded
    elif args['fsdp']:
        raise CheckpointError(f'{path}: a single-file checkpoint does not resume under args.fsdp; resume it '
                              'without fsdp, or start the sharded run in another --output_dir')
    else:
        state = load_checkpoint(path, allow_unsafe=args['unsafe_load'])
        if not isinstance(state, dict) or 'model' not in state:
            raise CheckpointError(f"{path}: not a generator checkpoint (no 'model' entry); use another "
                                  '--output_dir')
    if isinstance(state.get('config'), dict):
        try:
            saved = GeneratorConfig.from_dict(state['config']['model'])
        except ConfigError as e:
            raise CheckpointError(f'{path}: its model config does not fit this code ({e}); choose another '
                                  '--output_dir') from None
        check_same_model(saved.to_dict(), config['model'].to_dict(), path, AUTOENC_PATHS)
    return path, state


def train(config):
    """Resolve a typed config (typed_config), then train; the resolved config is printed and written beside
    every checkpoint. Nothing is written before the config, the data and a checkpoint to resume from are found
    usable."""
    config, data_root = resolve_run(config)
    resume = read_resume(config)
    dist = distributed.init_distributed(config['args']['device'], group_of_one=config['args']['fsdp'])
    try:
        trainer = Trainer(config, data_root, dist, resume)
        if dist.is_main:
            print('# resolved config\n' + config_text(config_record(config)), file=sys.stderr)
        trainer.run()
        trainer.close()
    finally:
        distributed.cleanup()
    return trainer


def ensure_autoencoder(config):
    """Train (or resume, or reuse) the autoencoder of args.autoenc_train_config with train_ae_codebook, with this
    run's seed, in that config's output_dir; returns the config with model.autoenc pointing at it."""
    args = config['args']
    train_config = train_ae.read_training_config(args['autoenc_train_config'], seed=args['seed'])
    folder = train_config['args']['output_dir']
    trained = AutoencoderFiles(config_path=os.path.join(folder, 'autoencoder_config.yaml'),
                               checkpoint_path=os.path.join(folder, LAST_CHECKPOINT))
    done = os.path.isfile(trained.checkpoint_path)
    print(f"autoencoder: {'checking' if done else 'training'} {trained.checkpoint_path} "
          f"({args['autoenc_train_config']})", file=sys.stderr)
    start = time.perf_counter()
    train_ae.train(train_config)
    print(f'autoencoder ready ({time.perf_counter() - start:.0f} s)', file=sys.stderr)
    return {**config, 'model': config['model'].replace(autoenc=trained)}


def write_showcase(config, device):
    """Samples with maps figures and the step-by-step GIF from the final checkpoint, into output_dir/samples."""
    args = config['args']
    model = load_generator(last_checkpoint(args['output_dir']), use_ema=bool(args['ema']), device=device)
    labels = balanced_labels(args['showcase_images'], model.num_classes) if model.class_cond else None
    main_sample.showcase(model, sample_settings(args, resolve_precision(args['precision'], device)), labels,
                         args['showcase_images'], args['seed'], os.path.join(args['output_dir'], 'samples'))


def main(argv=None):
    with exit_on_error():
        config = typed_config(load_config(argv, TRAIN_OPTIONS, __doc__.split('\n')[0]))
        if config['args']['autoenc_train_config']:
            config = ensure_autoencoder(config)
        trainer = train(config)
        if trainer.dist.is_main:
            if config['args']['showcase_images']:
                write_showcase(config, trainer.device)
            summary = sample_quality.latest_evaluation(trainer.log.path)
            if summary:
                print(summary)


if __name__ == '__main__':
    main()


