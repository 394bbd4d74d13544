"""Exact likelihood of code pyramids under a sampling schedule (docs/model.md §7).

The sampler draws the tokens of one block independently given the codes of all earlier blocks, so the
distribution it samples from with a schedule (labels given, no guidance, temperature 1, no top-k/top-p)
factorizes over blocks, and the teacher-forced forward with that schedule's blocks gives every factor at
once: its log-probability of the actual codes is the exact log-likelihood of that distribution. Fewer
steps mean larger blocks, so more tokens are drawn without seeing each other: a noise-free measure of what
parallel drawing costs.
"""
import math

import torch

from models.sample_settings import SampleSettings
from util.precision import autocast


@torch.no_grad()
def code_log_probs(model, codes, labels, settings: SampleSettings):
    """[(B, s, s)] per scale: the log-probability in nats of every code of codes [(B, s, s)] with labels (B,)
    (None for an unconditional model) under the sampling distribution of the settings' schedule, in their
    precision. The distribution is the plain one: settings with guidance, a temperature other than 1, top-k or
    top-p are a ValueError."""
    plain = SampleSettings(steps_per_scale=settings.steps_per_scale, precision=settings.precision)
    if settings != plain:
        raise ValueError(f'the likelihood is that of unguided sampling at temperature 1 without top-k / top-p; got '
                         f'{settings.describe()}')
    training = model.training
    model.eval()
    try:
        with autocast(codes[0].device, settings.precision):
            logits, targets = model.teacher_forced_logits(codes, labels, settings.steps_per_scale)  # (B, P, V), (B, P)
    finally:
        model.train(training)
    logp = logits.float().log_softmax(-1).gather(-1, targets[..., None])[..., 0]  # (B, P) in sequence order
    grids = []
    for i, side in enumerate(model.sides):
        ranked = logp[:, model.scale_slice(i)]  # (B, n) in rank order
        cells = model.seq_positions[model.scale_slice(i)] - model.offsets[i]  # (n,) cell of each rank
        grids.append(torch.empty_like(ranked).index_copy_(1, cells, ranked).view(-1, side, side))
    return grids


def code_log_likelihood(model, codes, labels, settings: SampleSettings):
    """(B, number of scales) log-likelihood in nats of each scale's codes: code_log_probs summed per scale."""
    return torch.stack([grid.flatten(1).sum(1) for grid in code_log_probs(model, codes, labels, settings)], 1)


def bits(nats):
    """Nats -> bits."""
    return nats / math.log(2)
