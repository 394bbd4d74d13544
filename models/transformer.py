"""Pre-norm Llama transformer with adaLN class conditioning, learned unit-modulus rotary positions and
current/past key mixing (docs/model.md §5). State-dict keys follow the published `llama.*` layout."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
import torch.utils.checkpoint

from models.generator_config import TransformerConfig


def ffn_width(dim, intermediate_size=None, multiple_of=256):
    """SwiGLU width: int(8C/3), rescaled to intermediate_size (float arithmetic as published), rounded up."""
    width = int(2 * 4 * dim / 3)
    if intermediate_size is not None:
        width = int(intermediate_size / width * width)
    return -(-width // multiple_of) * multiple_of


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) computed in float32, times a learned weight."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        if x.dtype == torch.float32:  # one fused kernel; same arithmetic
            return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)
        return F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).type_as(x) * self.weight


class AdaLNModulation(nn.Module):
    """(shift, scale) = Linear(SiLU(y)) of the class condition y; applied by `modulate`."""

    def __init__(self, dim):
        super().__init__()
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, y):
        return self.adaLN_modulation(y).chunk(2, dim=-1)  # (B, 1, C) each


def modulate(x, shift_scale):
    """x * scale + shift (the scale used as is), or x when shift_scale is None (unconditional)."""
    if shift_scale is None:
        return x
    shift, scale = shift_scale
    return torch.addcmul(shift, x, scale)


class UnitModulus(nn.Module):
    """Parametrization: each interleaved (re, im) pair divided by its norm."""

    def forward(self, w):
        pairs = w.reshape(*w.shape[:-1], -1, 2)
        return (pairs / pairs.norm(dim=-1, keepdim=True)).reshape(w.shape)


def rotary_init(scale_sides, head_dim):
    """Initial rotary rows (P + 2, head_dim) complex: 2-D angles per position plus scale entries;
    the last two rows (class token, empty token) are 1 + 0i."""
    top = scale_sides[-1]
    freq_dim = head_dim - head_dim // 8
    freq_dim += freq_dim % 2
    freqs = 1.0 / (top ** 2) ** (torch.arange(0, freq_dim, 2)[:freq_dim // 2].float() / freq_dim)  # (F/2,)
    scale_dim = head_dim - freq_dim
    scale_freqs = math.pi / 2 / 10.0 ** (torch.arange(scale_dim) / scale_dim)
    rows = []
    for i, side in enumerate(scale_sides):
        stride = top / side
        cell = torch.arange(side * side)
        ax = (stride * (cell % side) + 1)[:, None] * freqs  # (n, F/2)
        ay = (stride * (cell // side) + 1)[:, None] * freqs
        angles = torch.cat([ax, ay], dim=1)
        scale_part = torch.exp(1j * scale_freqs * (i + 1)).expand(side * side, -1)
        rows.append(torch.cat([torch.polar(torch.ones_like(angles), angles), scale_part], dim=1))
    rows.append(torch.ones(2, head_dim, dtype=torch.cfloat))
    return torch.cat(rows)


class RotaryTable(nn.Module):
    """Learned rotary rows (unit modulus) and the per-layer, per-head mixing of current and past rows."""

    def __init__(self, scale_sides, head_dim, num_heads, num_mixing_layers):
        super().__init__()
        init = rotary_init(scale_sides, head_dim)
        self.position_embeddings = nn.Embedding(init.shape[0], 2 * head_dim)
        with torch.no_grad():
            self.position_embeddings.weight.copy_(torch.view_as_real(init).reshape(init.shape[0], -1))
        parametrize.register_parametrization(self.position_embeddings, 'weight', UnitModulus())
        self.mixing_coeffs = nn.Parameter(torch.zeros(num_mixing_layers, num_heads))
        self.class_row, self.empty_row = init.shape[0] - 2, init.shape[0] - 1

    def cos_sin(self, ids):
        """Row ids (S,) -> (cos, sin), each (S, D)."""
        rows = self.position_embeddings(ids)
        rows = rows.view(*ids.shape, -1, 2)
        return rows[..., 0], rows[..., 1]

    def key_rope(self, layer, cur, past):
        """Rotary for keys of one layer: sigma(a_lh) * cur + (1 - sigma(a_lh)) * past per head, or cur."""
        if layer >= self.mixing_coeffs.shape[0]:
            return cur
        alpha = torch.sigmoid(self.mixing_coeffs[layer])[:, None, None]  # (H, 1, 1)
        return tuple(alpha * c + (1 - alpha) * p for c, p in zip(cur, past))  # (H, S, D) each


def apply_rotary(x, cos, sin):
    """x * cos + rotate_half(x) * sin for x (B, H, S, D), rotate_half(x) = concat(-x[D/2:], x[:D/2])."""
    x1, x2 = x.chunk(2, dim=-1)
    c1, c2 = cos.chunk(2, dim=-1)
    s1, s2 = sin.chunk(2, dim=-1)
    return torch.cat([x1 * c1 - x2 * s1, x2 * c2 + x1 * s2], dim=-1).type_as(x)


class KVCache:
    """Preallocated keys and values of one layer for the whole sequence; appended step by step."""

    def __init__(self, batch, heads, length, head_dim, dtype, device):
        self.k = torch.empty(batch, heads, length, head_dim, dtype=dtype, device=device)
        self.v = torch.empty_like(self.k)
        self.length = 0

    def append(self, k, v):
        end = self.length + k.shape[2]
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    """Multi-head attention, fused qkv projection, no biases."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(self, x, q_rope, k_rope, mask=None, cache=None):
        B, S, C = x.shape
        q, k, v = self.wqkv(x).view(B, S, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # (B, H, S, D) each
        q, k = apply_rotary(q, *q_rope), apply_rotary(k, *k_rope)
        if cache is not None:
            k, v = cache.append(k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, S, D)
        return self.wo(out.transpose(1, 2).reshape(B, S, C))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim, width):
        super().__init__()
        self.w1 = nn.Linear(dim, width, bias=False)
        self.w3 = nn.Linear(dim, width, bias=False)
        self.w2 = nn.Linear(width, dim, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """Pre-norm attention and FFN, each norm followed by the class modulation when class-conditional."""

    def __init__(self, dim, num_heads, ffn_dim, eps, class_cond):
        super().__init__()
        self.attention = Attention(dim, num_heads)
        self.feed_forward = FeedForward(dim, ffn_dim)
        self.attention_norm = RMSNorm(dim, eps)
        self.ffn_norm = RMSNorm(dim, eps)
        if class_cond:
            self.input_modulation = AdaLNModulation(dim)
            self.post_attention_modulation = AdaLNModulation(dim)
        self.class_cond = class_cond

    def modulations(self, cond):
        """(before attention, before the FFN) (shift, scale) pairs of cond (B, 1, C); (None, None) if
        unconditional."""
        if not self.class_cond:
            return None, None
        return self.input_modulation(cond), self.post_attention_modulation(cond)

    def forward(self, x, cond, q_rope, k_rope, mask=None, cache=None, modulations=None):
        """modulations: self.modulations(cond) when already computed (sampling reuses them); computed here
        otherwise, inside this module's call (where FSDP has gathered its weights)."""
        modulations = modulations or self.modulations(cond)
        x = x + self.attention(modulate(self.attention_norm(x), modulations[0]), q_rope, k_rope, mask, cache)
        return x + self.feed_forward(modulate(self.ffn_norm(x), modulations[1]))


class Transformer(nn.Module):
    """Stack of blocks, final RMSNorm; rotary rows looked up from position ids shared across the batch."""

    def __init__(self, scale_sides, config: TransformerConfig, class_cond, num_mixing_layers):
        super().__init__()
        hidden_size, num_attention_heads = config.hidden_size, config.num_attention_heads
        num_hidden_layers, rms_norm_eps, head_dim = config.num_hidden_layers, config.rms_norm_eps, config.head_dim
        if num_mixing_layers in (None, 'all'):
            num_mixing_layers = num_hidden_layers
        width = ffn_width(hidden_size, config.intermediate_size)
        self.layers = nn.ModuleList(Block(hidden_size, num_attention_heads, width, rms_norm_eps, class_cond)
                                    for _ in range(num_hidden_layers))
        self.norm = RMSNorm(hidden_size, rms_norm_eps)
        self.rotary_emb = RotaryTable(scale_sides, head_dim, num_attention_heads, num_mixing_layers)
        self.num_heads, self.head_dim = num_attention_heads, head_dim
        self.grad_checkpointing = False  # recompute each block in the backward pass (training only)
        for m in self.modules():  # published init: every Linear N(0, 0.02), zero bias (adaLN included)
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def new_caches(self, batch, length, dtype, device):
        return [KVCache(batch, self.num_heads, length, self.head_dim, dtype, device) for _ in self.layers]

    def modulations(self, cond):
        """Every layer's class modulations of cond (B, 1, C) or None; computed once per sampling run."""
        return [layer.modulations(cond) for layer in self.layers]

    def forward(self, x, cond, cur_ids, past_ids, mask=None, caches=None, modulations=None):
        """x (B, S, C); cond (B, 1, C) or None; cur_ids / past_ids (S,) rotary rows of the current and
        carried positions; mask (S, S_total) bool or None; caches: list of KVCache or None;
        modulations: self.modulations(cond) when already computed."""
        cur = self.rotary_emb.cos_sin(cur_ids)
        past = self.rotary_emb.cos_sin(past_ids)
        recompute = self.grad_checkpointing and torch.is_grad_enabled()
        for i, layer in enumerate(self.layers):
            inputs = (x, cond, cur, self.rotary_emb.key_rope(i, cur, past), mask,
                      caches[i] if caches is not None else None, modulations[i] if modulations else None)
            x = torch.utils.checkpoint.checkpoint(layer, *inputs, use_reentrant=False) if recompute else layer(*inputs)
        return self.norm(x)
