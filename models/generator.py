"""The checkerboard generator (docs/model.md §4, §6): per-token inputs, the teacher-forced training forward and the
block mask; sampling lives in models/sampler.py. State-dict keys follow the published AR layout."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from models.checkerboard import block_layout, random_block_size, scale_sizes, scan_ranks, schedule_block_sizes
from models.generator_config import GeneratorConfig
from models.sampler import sample
from models.transformer import Transformer
from util.config import ConfigError


class CodeMLP(nn.Module):
    """Linear(E->h) SiLU Linear(h->h) SiLU Linear(h->C), h = max(64, E); keys net.0/2/4."""

    def __init__(self, in_dim, out_dim, last_bias=True):
        super().__init__()
        hidden = max(64, in_dim)
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, out_dim, bias=last_bias))

    def forward(self, x):
        return self.net(x)


class L2GradPenalty(torch.autograd.Function):
    """Identity whose backward adds strength * w to the gradient (an L2 penalty applied through the grad)."""

    @staticmethod
    def forward(ctx, w, strength):
        ctx.save_for_backward(w)
        ctx.strength = strength
        return w.view_as(w)

    @staticmethod
    def backward(ctx, grad):
        w, = ctx.saved_tensors
        return grad + ctx.strength * w, None


def batch_rows(draw, rows, batch):
    """Per-sample random draws that do not depend on how a global batch is split across processes or
    accumulation steps: draw(n) makes the draws for the whole global batch; rows = (first row, global
    batch size) of this process's samples (None: the batch is the global batch)."""
    first, total = rows or (0, batch)
    return draw(total)[first:first + batch]


class CheckerboardGenerator(nn.Module):
    """Generates the code pyramid of a frozen VQ autoencoder, coarse to fine, in checkerboard blocks.

    Sequence: [class token] + every scale ascending, each scale's tokens in scan-rank order. The token of
    rank r asks for position r and carries the code of rank r - b (b = block size)."""

    def __init__(self, autoenc, config: GeneratorConfig):
        super().__init__()
        c = self.config = config
        if c.class_cond and not c.num_classes:
            raise ConfigError('model.class_cond is true but model.num_classes is not set (the training data or '
                              'the checkpoint fills it)')
        self.autoenc = autoenc.eval().requires_grad_(False)
        self.img_size, self.class_cond, self.num_classes = c.img_size, c.class_cond, c.num_classes
        self.num_blocks_per_scale, self.uncond_training_prob = c.num_blocks_per_scale, c.uncond_training_prob
        self.random_block_size, self.random_replace = c.random_block_size, c.random_replace
        self.random_replace_sampled, self.head_weights_l2_loss = c.random_replace_sampled, c.head_weights_l2_loss
        self.scan_order = c.scan_order
        try:
            self.sides = scale_sizes(c.img_size, autoenc.stride, c.scale_ratio, c.scale_min_size)
        except ValueError as e:
            raise ConfigError(f'model: {e}') from None
        if c.one_scale:
            self.sides = self.sides[-1:]
        self.offsets = [sum(s * s for s in self.sides[:i]) for i in range(len(self.sides))]
        self.num_positions = sum(s * s for s in self.sides)
        # rank_cells[i][r] = grid cell (y * s + x) of rank r at scale i; seq_positions: global id per token
        rank_cells = [torch.argsort(scan_ranks(s, c.scan_order).reshape(-1)) for s in self.sides]
        self.register_buffer('seq_positions', torch.cat([o + c for o, c in zip(self.offsets, rank_cells)]),
                             persistent=False)

        dim = c.llama_config.hidden_size
        self.llama = Transformer(self.sides, c.llama_config, c.class_cond, c.num_mixing_layers)
        if c.class_cond:
            self.class_embeddings = nn.Embedding(c.num_classes + 1, dim)
        self.embed_positions = nn.Embedding(self.num_positions, dim)
        self.embed_codevecs_mlp = CodeMLP(autoenc.embed_dim, dim)
        self.src_latents_proj = nn.Linear(dim, dim)
        self.combine_inputs = nn.Linear(4 * dim, dim)
        self.empty_token_emb = nn.Parameter(torch.zeros(dim))
        self.empty_token_pos = nn.Parameter(torch.zeros(dim))
        self.head_mlp = CodeMLP(autoenc.embed_dim, dim, last_bias=False) if c.use_head_mlp else None
        self.lm_head = nn.Linear(dim, autoenc.n_embed)
        nn.init.zeros_(self.lm_head.weight)
        nn.init.zeros_(self.lm_head.bias)
        self.compiled_transformer = None  # set by compile_for_training()

    def compile_for_training(self):
        """Run the transformer of training forwards through torch.compile (a fixed-shape graph: compiling
        takes up to a few minutes, then each step is faster); sampling and eval forwards stay eager."""
        self.compiled_transformer = torch.compile(self.llama.forward, dynamic=False)

    def train(self, mode=True):
        super().train(mode)
        self.autoenc.eval()  # frozen, always in eval mode
        return self

    @property
    def vocab_size(self):
        return self.autoenc.n_embed

    def scale_slice(self, i):
        return slice(self.offsets[i], self.offsets[i] + self.sides[i] ** 2)

    # ---- inputs -------------------------------------------------------------------------------------

    def token_inputs(self, positions, src_vecs, carried_positions, carried_vecs):
        """Input vectors of a run of tokens: combine_inputs(pos, src, carried pos, carried code).

        positions (S,) global ids; src_vecs (B, S, E) previous scale's vectors upscaled; carried_positions
        (S,) global id of the carried token or -1 (empty); carried_vecs (B, S, E) -> (B, S, C)."""
        B, S, _ = src_vecs.shape
        empty = (carried_positions < 0)[:, None]  # (S, 1)
        pos = self.embed_positions(positions).expand(B, S, -1)
        carried_pos = torch.where(empty, self.empty_token_pos, self.embed_positions(carried_positions.clamp_min(0)))
        carried = torch.where(empty, self.empty_token_emb, self.embed_codevecs_mlp(carried_vecs))
        src = self.src_latents_proj(self.embed_codevecs_mlp(src_vecs))
        return self.combine_inputs(torch.cat([pos, src, carried_pos.expand(B, S, -1), carried], dim=-1))

    def rotary_past_ids(self, carried_positions):
        return torch.where(carried_positions < 0, self.llama.rotary_emb.empty_row, carried_positions)

    def class_condition(self, labels):
        """(B,) labels (num_classes = null) -> (B, 1, C) class embeddings, or None if unconditional."""
        return self.class_embeddings(labels)[:, None] if self.class_cond else None

    def upscaled_source(self, prev_vecs, i, batch, device):
        """Previous scale's code vectors (B, E, s', s') resized to scale i, in rank order (B, n, E)."""
        side = self.sides[i]
        if prev_vecs is None:
            return torch.zeros(batch, side * side, self.autoenc.embed_dim, device=device)
        up = self.autoenc.rescale_latents(prev_vecs, side).flatten(2)  # (B, E, n)
        cells = self.seq_positions[self.scale_slice(i)] - self.offsets[i]
        return up[:, :, cells].transpose(1, 2)

    def codes_from_images(self, images):
        """Images (B, 3, H, W) in [-1, 1] -> codes per scale [(B, s, s)] (frozen autoencoder)."""
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            return self.autoenc.pyramid_codes(images.float(), self.sides)

    def random_codebook_swap(self, vecs, generator, rows=None):
        """Replace a random_replace fraction of the cells of (B, E, s, s) by random codebook vectors."""
        B, E, s, _ = vecs.shape
        dev = vecs.device
        mask = batch_rows(lambda n: torch.rand(n, 1, s, s, generator=generator, device=dev), rows, B)
        random_codes = batch_rows(lambda n: torch.randint(self.vocab_size, (n, s, s), generator=generator,
                                                          device=dev), rows, B)
        return torch.where(mask < self.random_replace, self.autoenc.codes_to_latents(random_codes), vecs)

    # ---- training forward ------------------------------------------------------------------------------

    def sequence_inputs(self, codes, block_sizes, folds, generator=None, rows=None):
        """Token inputs of the whole pyramid, teacher forced.

        codes: [(B, s, s)] per scale. Returns inputs (B, P, C), targets (B, P), carried positions (P,)
        and block ids (P,), all in sequence order."""
        B, device = codes[0].shape[0], codes[0].device
        replace = self.training and self.random_replace > 0
        src, carried_vecs, carried_pos, targets, block_ids = [], [], [], [], []
        prev_vecs, next_block = None, 1  # block 0 is the class token
        for i, side in enumerate(self.sides):
            cells = self.seq_positions[self.scale_slice(i)] - self.offsets[i]
            vecs = self.autoenc.codes_to_latents(codes[i])  # (B, E, s, s)
            source = prev_vecs
            if replace and i > 0:
                if self.random_replace_sampled:
                    vecs = self.random_codebook_swap(vecs, generator, rows)
                else:
                    source = self.random_codebook_swap(prev_vecs, generator, rows)
            src.append(self.upscaled_source(source, i, B, device))
            ranked = vecs.flatten(2)[:, :, cells].transpose(1, 2)  # (B, n, E) in rank order
            block_id, carried = block_layout(side * side, block_sizes[i], folds[i])
            carried = carried.to(device)
            carried_vecs.append(ranked[:, carried.clamp_min(0)])
            carried_pos.append(torch.where(carried < 0, -1, self.offsets[i] + cells[carried.clamp_min(0)]))
            targets.append(codes[i].flatten(1)[:, cells])
            block_ids.append(block_id.to(device) + next_block)
            next_block = int(block_ids[-1][-1]) + 1
            prev_vecs = vecs
        carried_pos = torch.cat(carried_pos)
        inputs = self.token_inputs(self.seq_positions, torch.cat(src, 1), carried_pos, torch.cat(carried_vecs, 1))
        return inputs, torch.cat(targets, 1), carried_pos, torch.cat(block_ids)

    def full_sequence(self, inputs, labels, carried_pos, block_ids):
        """Prepend the class token (if class-conditional). Returns inputs (B, L, C), the class condition,
        the rotary rows of the current and carried positions (L,) and the block ids (L,)."""
        cond = self.class_condition(labels)
        cur_ids, past_ids = self.seq_positions, self.rotary_past_ids(carried_pos)
        if self.class_cond:
            class_row = self.llama.rotary_emb.class_row
            inputs = torch.cat([cond, inputs], dim=1)
            block_ids = F.pad(block_ids, (1, 0))
            cur_ids, past_ids = F.pad(cur_ids, (1, 0), value=class_row), F.pad(past_ids, (1, 0), value=class_row)
        return inputs, cond, cur_ids, past_ids, block_ids

    def hidden_states(self, inputs, labels, carried_pos, block_ids):
        """Transformer over [class token] + inputs under the block mask -> (B, P, C) (class token dropped)."""
        inputs, cond, cur_ids, past_ids, block_ids = self.full_sequence(inputs, labels, carried_pos, block_ids)
        mask = block_ids[None, :] <= block_ids[:, None]  # (L, L): query i sees key j iff block j <= block i
        transformer = self.compiled_transformer if self.training and self.compiled_transformer else self.llama
        h = transformer(inputs, cond, cur_ids, past_ids, mask)
        return h[:, 1:] if self.class_cond else h

    def head(self, h):
        """Hidden (..., C) -> logits (..., V); with head_mlp the weights are head_mlp(codebook) + lm_head."""
        if self.head_mlp is None:
            return self.lm_head(h)
        w = self.head_mlp(self.autoenc.codebook().detach())
        if torch.is_grad_enabled():
            w = L2GradPenalty.apply(w, self.head_weights_l2_loss)
        return F.linear(h, w + self.lm_head.weight, self.lm_head.bias)

    def eval_block_sizes(self, schedule):
        """The block size of every scale under a sampling schedule (models.checkerboard.schedule_block_sizes)."""
        return [blocks[0] for blocks in schedule_block_sizes(self.sides, schedule)]

    def teacher_forced_logits(self, codes, labels, schedule=None):
        """(logits (B, P, V), targets (B, P)) in sequence order (no class token): the blocks of a sampling
        schedule (default num_blocks_per_scale), no training randomness, so a token's logits are those the
        sampler computes at its step given the same earlier codes (docs/model.md §7)."""
        blocks = self.eval_block_sizes(schedule or self.num_blocks_per_scale)
        inputs, targets, carried_pos, block_ids = self.sequence_inputs(codes, blocks, [False] * len(self.sides))
        return self.head(self.hidden_states(inputs, labels, carried_pos, block_ids)), targets

    def forward(self, codes_or_images, labels=None, generator=None, rows=None):
        """Training objective. codes_or_images: [(B, s, s)] codes per scale or images (B, 3, H, W).
        generator drives the training randomness; rows = (first row, global batch size) of this batch in
        the global batch (see batch_rows). Returns (loss, stats) with per-scale loss and top-1 accuracy as
        detached tensors."""
        codes = codes_or_images
        if torch.is_tensor(codes) and codes.is_floating_point():
            codes = self.codes_from_images(codes)
        B, device = codes[0].shape[0], codes[0].device
        if self.class_cond:
            if self.training and self.uncond_training_prob > 0:
                drop = batch_rows(lambda n: torch.rand(n, generator=generator, device=device), rows, B)
                labels = torch.where(drop < self.uncond_training_prob, self.num_classes, labels)
        if self.training:
            blocks = [random_block_size(s * s, generator) if self.random_block_size
                      else max(1, s * s // self.num_blocks_per_scale) for s in self.sides]
            folds = [bool(s * s % b) and torch.rand(1, generator=generator, device=device).item() < 0.5
                     for s, b in zip(self.sides, blocks)]
        else:
            blocks, folds = self.eval_block_sizes(self.num_blocks_per_scale), [False] * len(self.sides)
        inputs, targets, carried_pos, block_ids = self.sequence_inputs(codes, blocks, folds, generator, rows)
        logits = self.head(self.hidden_states(inputs, labels, carried_pos, block_ids))  # (B, P, V)
        token_loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction='none')
        loss = token_loss.mean()
        stats = {'loss': loss.detach()}
        with torch.no_grad():
            token_loss = token_loss.view(B, -1)
            correct = (logits.argmax(-1) == targets).float()  # (B, P)
            for i, side in enumerate(self.sides):
                stats[f'loss_s{side}'] = token_loss[:, self.scale_slice(i)].mean()
                stats[f'acc_s{side}'] = correct[:, self.scale_slice(i)].mean()
        return loss, stats

    def sample(self, settings, **kwargs):
        """Draw images with SampleSettings; see models.sampler.sample for the other arguments."""
        return sample(self, settings, **kwargs)
