"""Optimizer and learning-rate schedule (timm): AdamW with the published weight-decay groups; constant,
cosine or step schedules with linear warmup, stepped per optimizer update."""
import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

SCHEDULES = ('constant', 'cosine', 'step')


def base_lr(args, global_batch):
    """args.lr, or args.blr * global_batch / 256."""
    return args['lr'] if args['lr'] is not None else args['blr'] * global_batch / 256


def build_optimizer(model, lr, weight_decay, betas=(0.9, 0.95)):
    """AdamW; no weight decay on 1-D parameters (norms, embeddings' scalars) and biases."""
    groups = param_groups_weight_decay(model, weight_decay)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def build_scheduler(optimizer, args, steps_per_epoch):
    """A timm scheduler in optimizer steps; call .step_update(step) after every optimizer step."""
    warmup = round(args['warmup_epochs'] * steps_per_epoch)
    common = dict(warmup_t=warmup, warmup_lr_init=0.0, t_in_epochs=False)
    if args['lr_schedule'] == 'cosine':
        return CosineLRScheduler(optimizer, t_initial=max(1, args['epochs'] * steps_per_epoch - warmup),
                                 lr_min=args['min_lr'], warmup_prefix=True, **common)
    decay_at = [round(e * steps_per_epoch) for e in args['lr_step_epochs']] if args['lr_schedule'] == 'step' else []
    return MultiStepLRScheduler(optimizer, decay_t=decay_at, decay_rate=args['lr_step_factor'],
                                warmup_prefix=False, **common)
