"""Optimizer and learning-rate schedule (timm): AdamW with the published weight-decay groups; constant,
cosine or step schedules with linear warmup, stepped per optimizer update."""
import torch
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

SCHEDULES = ('constant', 'cosine', 'step')


def base_lr(args, global_batch):
    """args.lr, or args.blr * global_batch / 256."""
    return args['lr'] if args['lr'] is not None else args['blr'] * global_batch / 256


def adamw(groups, lr):
    """AdamW with the published betas (0.9, 0.95)."""
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


OPTIMIZERS = {'adamw': adamw}  # args.optimizer: name -> optimizer of (parameter groups, lr)


def build_optimizer(name, model, lr, weight_decay):
    """The optimizer OPTIMIZERS[name]; no weight decay on 1-D parameters (norms, embeddings' scalars) and
    biases."""
    return OPTIMIZERS[name](param_groups_weight_decay(model, weight_decay), lr)


def cosine_schedule(optimizer, total_steps, warmup_steps, min_lr, warmup_lr_init=0.0):
    """timm cosine decay to min_lr over the steps after warmup_steps of linear warmup from warmup_lr_init
    (warmup_lr_init = the optimizer's lr holds it constant meanwhile)."""
    return CosineLRScheduler(optimizer, t_initial=max(1, total_steps - warmup_steps), lr_min=min_lr,
                             warmup_t=warmup_steps, warmup_lr_init=warmup_lr_init, warmup_prefix=True,
                             t_in_epochs=False)


def build_scheduler(optimizer, args, steps_per_epoch):
    """The generator's timm scheduler in optimizer steps; call .step_update(step) after every optimizer step."""
    warmup = round(args['warmup_epochs'] * steps_per_epoch)
    if args['lr_schedule'] == 'cosine':
        return cosine_schedule(optimizer, args['epochs'] * steps_per_epoch, warmup, args['min_lr'])
    common = dict(warmup_t=warmup, warmup_lr_init=0.0, t_in_epochs=False)
    decay_at = [round(e * steps_per_epoch) for e in args['lr_step_epochs']] if args['lr_schedule'] == 'step' else []
    return MultiStepLRScheduler(optimizer, decay_t=decay_at, decay_rate=args['lr_step_factor'],
                                warmup_prefix=False, **common)
