"""The generator training loop behind main.py: data (images or token cache), DDP, bf16 autocast, AdamW,
timm schedule and EMA, gradient accumulation and clipping, atomic checkpoints, exact resume, inline eval."""
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
import yaml
from tqdm import tqdm

from data.builtin import resolve_data_path
from data.image_folder import ImageFolderDataset, scan_image_folder
from data.token_cache import TokenCacheDataset, autoencoder_fingerprint, create_token_cache
from models import build_generator
from models.autoencoder import read_autoencoder_config
from models.load import resolve_path
from util import distributed
from util.batches import GlobalBatchSampler
from util.checkpoint import load_checkpoint, save_checkpoint
from util.config import ConfigError, dump_config
from util.precision import autocast, resolve_precision
from util.run_log import RunLog
from util.schedule import SCHEDULES, base_lr, build_optimizer, build_scheduler

LAST = 'checkpoint-last.pth'


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the run stops without saving."""


def validate(config):
    """Checks that need no work: one ConfigError per problem. Returns the resolved dataset folder."""
    args, model = config['args'], config['model']
    if args['batch_size'] < 1 or args['grad_accum_steps'] < 1:
        raise ConfigError('batch_size and grad_accum_steps must be >= 1')
    if args['batch_size'] % args['grad_accum_steps']:
        raise ConfigError(f"batch_size {args['batch_size']} is not divisible by grad_accum_steps "
                          f"{args['grad_accum_steps']}")
    if args['lr_schedule'] not in SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {SCHEDULES}, got {args['lr_schedule']!r}")
    if args['lr'] is None and args['blr'] is None:
        raise ConfigError('set args.lr or args.blr')
    if args['precision'] not in ('auto', 'fp32', 'bf16'):
        raise ConfigError(f"precision must be auto, fp32 or bf16, got {args['precision']!r}")
    if not isinstance(model.get('autoenc'), dict):
        raise ConfigError('model.autoenc is missing (config_path and checkpoint_path of the autoencoder)')
    for key in ('config_path', 'checkpoint_path'):
        path = model['autoenc'].get(key)
        if path is None or not os.path.isfile(resolve_path(path)):
            raise ConfigError(f'autoencoder file not found: model.autoenc.{key} = {path} '
                              '(see pretrained_models/README.md, or set args.autoenc_train_config to train one)')
    if args['compile'] and not distributed.uses_cuda(args['device']):
        check_cpu_compiler()
    if args['data_path'] is None:
        raise ConfigError('args.data_path is required (an ImageNet-layout folder or a built-in dataset name)')
    try:
        root = resolve_data_path(args['data_path'], args['builtin_root'])
        classes, _ = scan_image_folder(root, 'train')
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if model.get('class_cond'):
        if model.setdefault('num_classes', len(classes)) != len(classes):
            raise ConfigError(f"model.num_classes is {model['num_classes']} but {root}/train has "
                              f'{len(classes)} classes')
    return root


def check_cpu_compiler():
    """torch.compile on a CPU builds C++ kernels: ConfigError unless inductor finds a C++ compiler."""
    from torch._inductor import cpp_builder
    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:
        raise ConfigError(f'--compile on a CPU needs a C++ compiler (g++, or set CXX) and none was found '
                          f'({type(e).__name__}); install one or leave compile off') from None


def find_resume(args):
    """The checkpoint to resume from: --resume (file or folder) or output_dir's last checkpoint."""
    path = args['resume']
    if path is None:
        path = os.path.join(args['output_dir'], LAST)
        return path if os.path.isfile(path) else None
    if os.path.isdir(path):
        path = os.path.join(path, LAST)
    if not os.path.isfile(path):
        raise ConfigError(f'--resume: no checkpoint at {path}')
    return path


def rng_states(train_gen):
    """The generators the run draws from: the shared training generator and torch's global one."""
    return {'train': train_gen.get_state(), 'torch': torch.get_rng_state()}


def peak_memory_mb(device):
    if device.type == 'cuda':
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Trainer:
    """State of one run: model, EMA, optimizer, schedule, data position."""

    def __init__(self, config, data_root):
        self.config, self.args = config, config['args']
        args = self.args
        self.dist = distributed.init_distributed(args['device'])
        self.device = self.dist.device
        self.precision = resolve_precision(args['precision'], self.device)
        torch.manual_seed(args['seed'] + self.dist.rank)
        np.random.seed(args['seed'] + self.dist.rank)
        random.seed(args['seed'] + self.dist.rank)
        self.model = build_generator(config['model'], device=self.device)
        self.autoenc_config = read_autoencoder_config(resolve_path(config['model']['autoenc']['config_path']))
        self.data_root = data_root
        self.dataset = self.build_dataset()
        self.sampler = GlobalBatchSampler(len(self.dataset), args['batch_size'], self.dist.rank,
                                          self.dist.world_size, args['seed'])
        self.loader = torch.utils.data.DataLoader(self.dataset, batch_sampler=self.sampler,
                                                  num_workers=args['num_workers'],
                                                  pin_memory=self.device.type == 'cuda')
        self.lr = base_lr(args, self.sampler.global_batch)
        self.optimizer = build_optimizer(self.model, self.lr, args['weight_decay'])
        self.scheduler = build_scheduler(self.optimizer, args, self.sampler.batches_per_epoch)
        self.ema = ModelEmaV3(self.model, decay=args['ema']) if args['ema'] > 0 else None
        if args['compile']:
            self.model.compile_for_training()
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.dist.local_rank]
                                            if self.device.type == 'cuda' else None)
                    if self.dist.enabled else self.model)
        self.train_gen = torch.Generator(self.device).manual_seed(args['seed'])  # same on every rank
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.log = RunLog(args['output_dir'], enabled=self.dist.is_main)

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

    def state(self):
        return {'model': self.model.state_dict(),
                'model_ema': self.ema.module.state_dict() if self.ema else None,
                'optimizer': self.optimizer.state_dict(), 'epoch': self.epoch, 'scaler': {},
                'args': argparse.Namespace(**self.args),
                'step': self.step, 'batch_in_epoch': self.batch_in_epoch,
                'scheduler': self.scheduler.state_dict(), 'rng': rng_states(self.train_gen),
                'config': {'model': self.config['model'], 'args': self.args},
                'autoenc_config': self.autoenc_config}

    def save(self, keep=False):
        """checkpoint-last.pth (and a numbered keep) with config.yaml beside it; rank 0 writes, atomically."""
        if self.dist.is_main:
            out = self.args['output_dir']
            state = self.state()
            save_checkpoint(state, os.path.join(out, LAST))
            if keep:
                save_checkpoint(state, os.path.join(out, f'checkpoint-{self.epoch:04d}.pth'))
            dump_config(self.config, os.path.join(out, 'config.yaml'))
        distributed.barrier()

    def resume(self, path):
        ck = load_checkpoint(path, allow_unsafe=self.args['unsafe_load'])
        self.model.load_state_dict(ck['model'])
        if self.ema is not None:
            self.ema.module.load_state_dict(ck['model_ema'] if ck.get('model_ema') else ck['model'])
        self.optimizer.load_state_dict(ck['optimizer'])
        self.scheduler.load_state_dict(ck['scheduler'])
        self.step, self.epoch, self.batch_in_epoch = ck['step'], ck['epoch'], ck['batch_in_epoch']
        self.train_gen.set_state(ck['rng']['train'].to(self.train_gen.get_state().device))
        if self.dist.world_size == 1:  # rank 0's global state is saved; other ranks keep their seeding
            torch.set_rng_state(ck['rng']['torch'])
        self.log.truncate_after(self.step)
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
            defer_sync = self.dist.enabled and j < accum - 1  # all-reduce gradients once, on the last part
            with self.ddp.no_sync() if defer_sync else contextlib.nullcontext(), \
                    autocast(self.device, self.precision):
                loss, stats = self.ddp(x, y, self.train_gen, (first + j * micro, total))
            (loss / accum).backward()
            for k, v in stats.items():
                stats_sum[k] = stats_sum.get(k, 0.0) + v.float() / accum
        finite = torch.tensor([float(torch.isfinite(stats_sum['loss']))], device=self.device)
        if self.dist.enabled:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if finite.item() < 1:
            raise NonFiniteLoss(f"non-finite loss ({stats_sum['loss'].item()}) at step {self.step + 1}; "
                                f"stopping without saving, the last checkpoint in {self.args['output_dir']} "
                                'is left as it was')
        clip = self.args['clip_grad'] or math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.scheduler.step_update(self.step)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        return {**{k: v.item() for k, v in stats_sum.items()}, 'grad_norm': grad_norm.item()}

    # ---- the loop -----------------------------------------------------------------------------------

    def run(self, evaluate=None):
        """Train to args.epochs (or args.max_steps); evaluate(trainer) runs every eval_freq epochs."""
        args = self.args
        tokens_per_image = self.model.num_positions
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
            if evaluate is not None and args['eval_freq'] and (
                    self.epoch % args['eval_freq'] == 0 or self.epoch == args['epochs']):
                evaluate(self)
        self.say(f"training done: {self.epoch} epochs, {self.step} steps; checkpoints in {args['output_dir']}")

    def close(self):
        self.log.close()
        distributed.cleanup()


def train(config, evaluate=None):
    """Validate, then train; the effective config is printed and written beside every checkpoint."""
    data_root = validate(config)
    trainer = Trainer(config, data_root)
    try:
        if trainer.dist.is_main:
            print(dump_text(config), file=sys.stderr)
        resume = find_resume(config['args'])
        if resume:
            trainer.resume(resume)
        trainer.run(evaluate)
    finally:
        trainer.close()
    return trainer


def dump_text(config):
    return '# effective config\n' + yaml.safe_dump({'model': config['model'], 'args': config['args']},
                                                    sort_keys=False)
