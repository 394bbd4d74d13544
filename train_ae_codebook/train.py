"""Train a VQ autoencoder's codebook, or the whole autoencoder, on the quantization pyramid.

    python -m train_ae_codebook.train --config train_ae_codebook/configs/requant_llamagen.yaml
    python -m train_ae_codebook.train --config train_ae_codebook/configs/shapes32.yaml --steps 3000

The first quantize_iter_start steps gather per-scale statistics of the encoder outputs (a full autoencoder
trains unquantized meanwhile); the codebook is then drawn from them and trained with the VQ loss, and dead
codes are redrawn every reinit_every steps. Writes output_dir/checkpoint-last.pth with autoencoder_config.yaml
beside it (load_autoencoder reads the pair), config.yaml, log.jsonl and pictures/; a run resumes from
output_dir/checkpoint-last.pth when it is there. Under torchrun it trains with DDP.
"""
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from train_ae_codebook.build import (SCHEMA, build_autoencoder, build_datasets, check_args,
                                     frozen_modules, load_start_weights, pyramid_sides, spread_images,
                                     spread_subset)
from train_ae_codebook.codebook import (MomentStats, init_codebook_from_stats, live_codes, perplexity,
                                        reinit_dead_codes, update_usage)
from train_ae_codebook.metrics import evaluate_pyramid, flat_metrics, format_metrics, save_pyramid_picture
from train_ae_codebook.objective import PyramidObjective, training_sides
from util.batches import GlobalBatchSampler
from util.checkpoint import CheckpointError, check_same_model, load_checkpoint, load_resumed_weights, save_checkpoint
from util.config import ConfigError, load_config, read_config, write_yaml
from util.distributed import all_reduce_mean, all_reduce_sum, barrier, cleanup, init_distributed, is_initialized
from util.run_dir import CONFIG_FILE, LAST_CHECKPOINT, LOG_FILE, check_finite, exit_on_error, find_resume
from util.run_log import RunLog
from util.schedule import cosine_schedule

PICTURE_IMAGES = 8


class Trainer:
    """The state of one run: autoencoder, objective (DDP-wrapped), optimizer, statistics, step counter."""

    def __init__(self, config):
        self.config, self.args = config, config['args']
        args = self.args
        check_args(args)
        if args['threads']:
            torch.set_num_threads(args['threads'])
        self.dist = init_distributed(args['device'])
        torch.manual_seed(args['seed'] + self.dist.rank)
        self.autoencoder, init = build_autoencoder(config['model'], args['config'])
        self.build_data()
        self.sides = pyramid_sides(self.autoencoder, args['scale_ratio'])
        self.stats = MomentStats(self.sides, self.autoencoder.embed_dim)
        self.generator = torch.Generator().manual_seed(args['seed'])  # the same draws on every rank
        self.step = 0
        checkpoint_path = find_resume(args['output_dir'], args['resume'])
        state = load_checkpoint(checkpoint_path) if checkpoint_path else None
        if state is not None:
            if isinstance(state.get('config'), dict):
                check_same_model({'params': state['config']['model']['params']}, {'params': config['model']['params']},
                                 checkpoint_path)
            load_resumed_weights(self.autoencoder, state['state_dict'], checkpoint_path)
        elif init['checkpoint']:
            load_start_weights(self.autoencoder, init['checkpoint'])
        self.build_training(frozen_modules(self.autoencoder, init))
        if state is not None:
            self.resume(checkpoint_path, state)
        self.log = RunLog(args['output_dir'], self.dist.is_main, name=LOG_FILE)
        self.log.truncate_after(self.step)
        if self.dist.is_main:
            write_yaml({'model': config['model'], 'args': args}, os.path.join(args['output_dir'], CONFIG_FILE))
            write_yaml(self.autoencoder.config.to_published(),
                       os.path.join(args['output_dir'], 'autoencoder_config.yaml'))

    def build_data(self):
        args = self.args
        self.train_set, val_set = build_datasets(args, self.autoencoder.resolution, args['seed'])
        self.val_set = spread_subset(val_set, args['val_images']) if val_set is not None else None
        try:
            self.sampler = GlobalBatchSampler(len(self.train_set), args['batch_size'], self.dist.rank,
                                              self.dist.world_size, args['seed'])
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=args['num_workers'],
                                 pin_memory=self.dist.device.type == 'cuda')

    def build_training(self, frozen):
        """Freeze, move to the device, wrap the objective (DDP under torchrun), make the optimizer."""
        args, ae = self.args, self.autoencoder
        self.frozen = frozen
        for module in frozen:
            module.requires_grad_(False)
        ae.to(self.dist.device)
        reconstruct = any(p.requires_grad for m in (ae.encoder, ae.decoder, ae.quant_conv, ae.post_quant_conv)
                          for p in m.parameters())
        self.objective = PyramidObjective(ae, args['beta'], reconstruct)
        self.model = self.objective
        if self.dist.enabled:
            self.model = DistributedDataParallel(
                self.objective, device_ids=[self.dist.local_rank] if self.dist.device.type == 'cuda' else None,
                find_unused_parameters=reconstruct)  # the codebook is unused while statistics are gathered
        self.optimizer = torch.optim.Adam([p for p in ae.parameters() if p.requires_grad], lr=args['lr'],
                                          betas=tuple(args['adam_betas']))
        # constant lr while statistics are gathered, then a cosine decay to lr * min_lr_ratio at the last step
        self.scheduler = cosine_schedule(self.optimizer, args['steps'], args['quantize_iter_start'],
                                         args['lr'] * args['min_lr_ratio'], warmup_lr_init=args['lr'])

    def resume(self, path, state):
        """Optimizer, step, random states and latent statistics of a checkpoint (the weights are loaded)."""
        try:
            self.optimizer.load_state_dict(state['optimizer'])
            self.stats.load_state_dict(state['codebook_stats'])
        except (ValueError, KeyError) as e:
            raise CheckpointError(f'{path}: cannot resume this run from it ({e})') from None
        self.step = state['step']
        self.generator.set_state(state['rng']['generator'])
        torch.set_rng_state(state['rng']['torch'])
        if self.dist.is_main:
            print(f'resumed from {path} at step {self.step}')

    def set_train_mode(self):
        self.objective.train()
        for module in self.frozen:
            module.eval()

    def train_step(self, images):
        """One optimizer step (or one statistics step); returns the numbers to log."""
        args, ae = self.args, self.autoencoder
        quantize = bool(ae.quantize.initialized)
        sides = training_sides(self.sides, ae.config.requant_pyramid_levels, args['p_train_random_scale'],
                               self.generator)
        self.scheduler.step_update(self.step)
        with torch.set_grad_enabled(self.objective.reconstruct or quantize):
            out = self.model(images, sides, quantize)
        check_finite(out['loss'].item(), self.step + 1, args['output_dir'], self.dist.device)
        if out['loss'].requires_grad:
            self.optimizer.zero_grad(set_to_none=True)
            out['loss'].backward()
            self.optimizer.step()
        record = {key: float(out[key].detach()) for key in ('loss', 'vq', 'recon')}
        if quantize:
            codes = torch.cat([c.flatten() for c in out['codes'].values()])
            counts = all_reduce_sum(torch.bincount(codes, minlength=ae.n_embed).float())
            update_usage(ae.cluster_usage_train, counts, args['usage_alpha'])
            done = self.step + 1 - args['quantize_iter_start']
            if args['reinit_every'] and done > 0 and done % args['reinit_every'] == 0:
                live = live_codes(ae.cluster_usage_train, args['dead_threshold'])
                record['reinit'] = reinit_dead_codes(ae, live, self.generator)
        else:
            for side, latents in out['latents'].items():
                self.stats.update(side, latents)
            if self.step + 1 >= args['quantize_iter_start']:
                for moments in (self.stats.count, self.stats.sum, self.stats.sum_sq):
                    all_reduce_sum(moments)
                rows = init_codebook_from_stats(ae, self.stats, self.generator)
                record['init_rows'] = rows
        self.step += 1
        return record

    def usage_record(self):
        usage = self.autoencoder.cluster_usage_train
        live = live_codes(usage, self.args['dead_threshold'])
        return {'usage': float(live.float().mean()), 'perplexity': perplexity(usage)}

    def save(self):
        if not self.dist.is_main:
            return
        state = {'state_dict': self.autoencoder.state_dict(), 'optimizer': self.optimizer.state_dict(),
                 'step': self.step, 'epoch': self.step // self.sampler.batches_per_epoch,
                 'rng': {'torch': torch.get_rng_state(), 'generator': self.generator.get_state()},
                 'codebook_stats': self.stats.state_dict(), 'config': self.config}
        save_checkpoint(state, os.path.join(self.args['output_dir'], LAST_CHECKPOINT))

    def val_metrics(self, final=False):
        """Per-scale metrics on the validation images and a picture (rank 0); None before the codebook exists."""
        results = None
        if self.dist.is_main and self.val_set is not None and bool(self.autoencoder.quantize.initialized):
            ae = self.autoencoder.eval()
            loader = DataLoader(self.val_set, self.args['batch_size'], num_workers=self.args['num_workers'])
            results = evaluate_pyramid(ae, (batch[0] for batch in loader), self.sides)
            self.log.write(self.step, flat_metrics(results))
            images = spread_images(self.val_set, PICTURE_IMAGES)
            folder = os.path.join(self.args['output_dir'], 'pictures')
            os.makedirs(folder, exist_ok=True)
            name = 'final.png' if final else f'step{self.step:07d}.png'
            save_pyramid_picture(ae, images.to(self.dist.device), self.sides, os.path.join(folder, name))
            self.set_train_mode()
        barrier()
        return results

    def run(self):
        args = self.args
        self.set_train_mode()
        bar = tqdm(total=args['steps'], initial=self.step, disable=not self.dist.is_main, desc='train')
        window, started, first_step = [], time.time(), self.step
        while self.step < args['steps']:
            epoch, start = divmod(self.step, self.sampler.batches_per_epoch)
            self.sampler.set_epoch(epoch, start)
            self.train_set.set_epoch(epoch)
            for images, _, _ in self.loader:
                record = self.train_step(images.to(self.dist.device, non_blocking=True))
                window.append(record)
                if 'init_rows' in record and self.dist.is_main:
                    tqdm.write(f"step {self.step}: codebook drawn from latent statistics, rows per scale "
                               f"{dict(zip(self.sides, record['init_rows']))}")
                if record.get('reinit') and self.dist.is_main:
                    tqdm.write(f"step {self.step}: re-initialized {record['reinit']} dead codes")
                if self.step % args['log_every'] == 0 or self.step == args['steps']:
                    means = all_reduce_mean({k: sum(r[k] for r in window) / len(window)
                                             for k in ('loss', 'vq', 'recon')}, self.dist.device)
                    means.update(self.usage_record(), lr=self.optimizer.param_groups[0]['lr'],
                                 reinit=sum(r.get('reinit', 0) for r in window),
                                 sec_per_step=(time.time() - started) / len(window))
                    self.log.write(self.step, means)
                    bar.set_postfix(loss=f"{means['loss']:.4f}", usage=f"{means['usage']:.2f}")
                    window, started = [], time.time()
                bar.update(1)
                if self.step % args['save_every'] == 0:
                    self.save()
                if args['val_every'] and self.step % args['val_every'] == 0 and self.step < args['steps']:
                    self.val_metrics()
                if self.step >= args['steps']:
                    break
        bar.close()
        if self.step > first_step:  # a finished run that is only re-checked leaves its checkpoint untouched
            self.save()
        results = self.val_metrics(final=True)
        if results is not None:
            print(format_metrics(results))
        self.log.close()


def read_training_config(path, **overrides):
    """The training config of a YAML file, with args overridden by keyword (output_dir=...)."""
    return read_config(path, SCHEMA, overrides)


def train(config):
    """Train (or resume, or re-check) the run a config describes; the caller's process group stays up."""
    Trainer(config).run()


def main(argv=None):
    owns_process_group = not is_initialized()
    try:
        with exit_on_error():
            train(load_config(argv, SCHEMA, __doc__.splitlines()[0]))
    finally:
        if owns_process_group:
            cleanup()


if __name__ == '__main__':
    main()
