"""Sampling (docs/model.md §7): scales coarse to fine, each in checkerboard blocks; one transformer pass per block over
the new slots only, against a preallocated KV cache; classifier-free guidance; per-sample seeds; known codes
kept where a mask says so (editing, likelihood checks)."""
from dataclasses import dataclass, field

import torch

from models.checkerboard import schedule_block_sizes
from models.sample_settings import SampleSettings
from util.precision import AUTOCAST_DTYPES, autocast


@dataclass
class SampleOutput:
    """codes: [(B, s, s)] per scale; images: decoded [(B, 3, H, W)], about [-1, 1] (raw decoder output,
    clamp before saving), top scale last;
    maps: 'step', 'prob', 'logp', 'entropy' -> [(B, s, s)] per scale (probability and log-probability of the
    drawn or kept code under the distribution it was drawn from); step_logits: raw head outputs per step."""
    codes: list
    images: list
    maps: dict
    labels: torch.Tensor = None
    step_logits: list = field(default_factory=list)

    @property
    def num_steps(self):
        return int(self.maps['step'][-1].max()) + 1


def filter_logits(logits, top_k=0, top_p=1.0):
    """Set logits outside the top-k / nucleus top-p set to -inf (both off by default)."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float('-inf'))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest set reaching top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float('-inf'))
    return logits


def draw(logits, temperature, top_k, top_p, uniforms, known=None, keep=None):
    """Draw one code per slot. logits (B, S, V) float32; uniforms (B, S) in [0, 1), one per slot (inverse CDF),
    each sample's from its own generator, so its draw does not depend on the rest of the batch. Where keep
    (B, S) is True the known code (B, S) replaces the draw. Returns tokens, log-probability of each token and
    entropy, both of the distribution drawn from (softmax(logits) when temperature is 0)."""
    logits = filter_logits(logits / (temperature or 1.0), top_k, top_p)
    logp = logits.log_softmax(-1)
    probs = logp.exp()
    if temperature == 0:
        tokens = logits.argmax(-1)
    else:
        cdf = probs.cumsum(-1)  # (B, S, V)
        total = cdf[..., -1:]
        u = uniforms[..., None]  # (B, S, 1)
        # u * total < total keeps the result inside [0, V); right=True never lands on a zero-probability code
        tokens = torch.searchsorted(cdf, torch.minimum(u * total, total.nextafter(torch.zeros_like(total))),
                                    right=True)[..., 0]  # (B, S)
    if keep is not None:
        tokens = torch.where(keep, known, tokens)
    entropy = -(probs * logp.nan_to_num(neginf=0.0)).sum(-1)
    return tokens, logp.gather(-1, tokens[..., None])[..., 0], entropy


def check_known(model, known_codes, known_mask, batch_size, device):
    """Known codes and masks as lists of (B, s, s) long / bool tensors on device; ValueError if they do not fit."""
    if len(known_codes) != len(model.sides) or len(known_mask) != len(model.sides):
        raise ValueError(f'known_codes and known_mask need one grid per scale {model.sides}, '
                         f'got {len(known_codes)} and {len(known_mask)}')
    codes, masks = [], []
    for side, c, m in zip(model.sides, known_codes, known_mask):
        c, m = torch.as_tensor(c, device=device).long(), torch.as_tensor(m, device=device).bool()
        if c.shape != (batch_size, side, side) or m.shape != c.shape:
            raise ValueError(f'known codes and mask of the {side}x{side} scale must be ({batch_size}, {side}, '
                             f'{side}), got {tuple(c.shape)} and {tuple(m.shape)}')
        if (c[m] < 0).any() or (c[m] >= model.vocab_size).any():
            raise ValueError(f'known codes of the {side}x{side} scale must be in [0, {model.vocab_size})')
        codes.append(c)
        masks.append(m)
    return codes, masks


def check_labels(model, labels, batch_size):
    """(labels (B,) long on the model's device or None, B); ValueError if they do not fit the model."""
    if model.class_cond:
        if labels is None:
            raise ValueError('this model is class-conditional: pass labels')
        labels = torch.as_tensor(labels, device=model.seq_positions.device).long().reshape(-1)
        if labels.min() < 0 or labels.max() >= model.num_classes:
            raise ValueError(f'labels must be in [0, {model.num_classes}), got {labels.tolist()}')
        return labels, labels.shape[0]
    if labels is not None or batch_size is None:
        raise ValueError('this model is unconditional: pass batch_size and no labels')
    return None, batch_size


def sample_uniforms(seeds, num_positions, device):
    """(B, P) uniforms: sample b's P draws, in sequence order, from a generator seeded with seeds[b]."""
    return torch.stack([torch.rand(num_positions, generator=torch.Generator(device).manual_seed(int(s)),
                                   device=device) for s in seeds])


def decode_scales(model, out, decode):
    """Decode out.codes at the scales decode names ('all', 'top' or 'none') into out.images."""
    decode_at = {'all': range(len(model.sides)), 'top': [len(model.sides) - 1], 'none': []}[decode]
    for i in decode_at:
        out.images.append(model.autoenc.decode(model.autoenc.codes_to_latents(out.codes[i])))
    return out


@torch.no_grad()
def sample(model, settings: SampleSettings, labels=None, batch_size=None, seeds=None, decode='all',
           return_step_logits=False, known_codes=None, known_mask=None, on_scale=None):
    """Sample code pyramids with settings and decode them.

    labels: (B,) class ids for a class-conditional model; batch_size for an unconditional one. Guidance
    doubles the batch (conditional, then null label). seeds: one int per sample (default: drawn from torch's
    global RNG). decode: 'all', 'top' or 'none'. known_codes, known_mask: [(B, s, s)] per scale, codes and a
    bool mask of the positions that keep them; a kept code is placed at its step instead of a draw, and its
    probability is recorded. on_scale(i) is called when scale i is drawn (the benchmark times scales with it)."""
    device = model.seq_positions.device
    labels, batch_size = check_labels(model, labels, batch_size)
    if seeds is None:
        seeds = torch.randint(2 ** 62, (batch_size,)).tolist()
    if len(seeds) != batch_size:
        raise ValueError(f'need one seed per sample: {batch_size} samples, {len(seeds)} seeds')
    if (known_codes is None) != (known_mask is None):
        raise ValueError('known_codes and known_mask go together')
    known = None if known_codes is None else check_known(model, known_codes, known_mask, batch_size, device)
    out = draw_pyramid(model, labels, sample_uniforms(seeds, model.num_positions, device), settings,
                       return_step_logits, known, on_scale=on_scale)
    return decode_scales(model, out, decode)


def draw_pyramid(model, labels, uniforms, settings: SampleSettings, return_step_logits=False, known=None,
                 autocast_cache=True, on_scale=None):
    """The sampling steps, on checked arguments: tensor work only, no host synchronization and shapes fixed by
    the schedule, so that a CUDA graph can capture them (models/graphed_sampler.py, with autocast_cache off).
    uniforms (B, P); known: (codes, masks) from check_known, or None. Returns a SampleOutput without images."""
    device = uniforms.device
    s = settings
    schedule = schedule_block_sizes(model.sides, s.steps_per_scale)
    guided = s.guided and model.class_cond
    B = uniforms.shape[0]
    full_labels = torch.cat([labels, torch.full_like(labels, model.num_classes)]) if guided else labels
    B2 = 2 * B if guided else B

    codebook = model.autoenc.codebook()
    out = SampleOutput(codes=[], images=[], maps={'step': [], 'prob': [], 'logp': [], 'entropy': []},
                       labels=labels)
    with autocast(device, s.precision, autocast_cache):
        cond = model.class_condition(full_labels)  # (B2, 1, C) or None
        modulations = model.llama.modulations(cond)  # the same at every step: computed once
        caches = model.llama.new_caches(B2, model.num_positions + model.class_cond,
                                        AUTOCAST_DTYPES.get(s.precision, torch.float32), device)
        if model.class_cond:  # the class token's own pass (not a step)
            class_ids = torch.full((1,), model.llama.rotary_emb.class_row, device=device)
            model.llama(cond, cond, class_ids, class_ids, caches=caches, modulations=modulations)
        step, drawn, prev_vecs = 0, 0, None
        for i, side in enumerate(model.sides):
            n = side * side
            positions = model.seq_positions[model.scale_slice(i)]  # (n,) global ids in rank order
            src = model.upscaled_source(prev_vecs, i, B2, device)  # (B2, n, E)
            ranked_vecs = torch.zeros(B2, n, codebook.shape[1], device=device)
            ranked = {k: torch.zeros(B, n, device=device, dtype=torch.long if k in ('code', 'step') else None)
                      for k in ('code', 'step', 'logp', 'entropy')}
            cells = positions - model.offsets[i]  # (n,) cell of each rank
            if known is not None:
                known_ranked = known[0][i].flatten(1)[:, cells]  # (B, n) in rank order
                keep = known[1][i].flatten(1)[:, cells]
            start, block = 0, None
            for size in schedule[i]:
                block = block or size
                ranks = torch.arange(start, start + size, device=device)
                carried = ranks - block  # slot j carries slot j of the previous step (or empty)
                carried_pos = torch.where(carried < 0, -1, positions[carried.clamp_min(0)])
                x = model.token_inputs(positions[ranks], src[:, ranks], carried_pos,
                                       ranked_vecs[:, carried.clamp_min(0)])
                h = model.llama(x, cond, positions[ranks], model.rotary_past_ids(carried_pos), caches=caches,
                                modulations=modulations)
                logits = model.head(h).float()  # (B2, size, V)
                if return_step_logits:
                    out.step_logits.append(logits)
                if guided:
                    c, u = logits[:B], logits[B:]
                    logits = c + s.cfg * (c - u) if step >= s.cfg_start_step else c
                forced = (known_ranked[:, ranks], keep[:, ranks]) if known is not None else (None, None)
                tokens, logp, entropy = draw(logits, s.temperature, s.top_k, s.top_p,
                                             uniforms[:, drawn:drawn + size], *forced)
                ranked_vecs[:, ranks] = codebook[tokens].repeat(B2 // B, 1, 1)
                for key, value in (('code', tokens), ('step', step), ('logp', logp), ('entropy', entropy)):
                    ranked[key][:, ranks] = value
                start, step, drawn = start + size, step + 1, drawn + size
            grid = {k: torch.empty_like(v).index_copy_(1, cells, v).view(B, side, side) for k, v in ranked.items()}
            out.codes.append(grid['code'])
            grid['prob'] = grid['logp'].exp()
            for key in ('step', 'prob', 'logp', 'entropy'):
                out.maps[key].append(grid[key])
            prev_vecs = model.autoenc.codes_to_latents(out.codes[-1]).repeat(B2 // B, 1, 1, 1)
            if on_scale is not None:
                on_scale(i)
    return out
