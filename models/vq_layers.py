"""Convolutional encoder and decoder of the VQ autoencoder (LlamaGen VQ-16 layout, state-dict compatible)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class GroupNorm(nn.GroupNorm):
    """nn.GroupNorm that also takes a batch of one whose groups hold one value each (a 1x1 map with one channel
    per group: a small stride-2 encoder at the 1x1 scale), which F.group_norm refuses. The kernel it calls
    normalizes such a value to 0 (output = bias), as it does for every image of a larger batch."""

    def forward(self, x):
        return torch.group_norm(x, self.num_groups, self.weight, self.bias, self.eps, torch.backends.cudnn.enabled)


def group_norm(channels):
    return GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """norm-swish-conv twice, plus a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels, out_channels, dropout=0.0):
        super().__init__()
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        if hasattr(self, 'nin_shortcut'):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all positions, with a residual."""

    def __init__(self, channels):
        super().__init__()
        self.norm = group_norm(channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q, k, v = (conv(h).reshape(B, 1, C, H * W).transpose(2, 3) for conv in (self.q, self.k, self.v))
        h = F.scaled_dot_product_attention(q, k, v)  # (B, 1, HW, C)
        return x + self.proj_out(h.transpose(2, 3).reshape(B, C, H, W))


class Downsample(nn.Module):
    """Zero-pad right and bottom, then a stride-2 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv."""

    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode='nearest'))


class Level(nn.Module):
    """One resolution level: res blocks (each followed by attention at the deepest level) and a resampler."""

    def __init__(self, widths, with_attn, resample=None, dropout=0.0):
        super().__init__()
        self.res = nn.ModuleList(ResnetBlock(i, o, dropout) for i, o in zip(widths[:-1], widths[1:]))
        self.attn = nn.ModuleList(AttnBlock(o) for o in widths[1:]) if with_attn else nn.ModuleList()
        if resample is not None:
            self.add_module(resample.__name__.lower(), resample(widths[-1]))

    def forward(self, x):
        for i, res in enumerate(self.res):
            x = res(x)
            if len(self.attn):
                x = self.attn[i](x)
        for name in ('downsample', 'upsample'):
            if hasattr(self, name):
                x = getattr(self, name)(x)
        return x


def middle(channels, dropout):
    return nn.Sequential(ResnetBlock(channels, channels, dropout), AttnBlock(channels),
                         ResnetBlock(channels, channels, dropout))


class Encoder(nn.Module):
    """Image (B, 3, H, W) -> features (B, z_channels, H/f, W/f), f = 2^(len(ch_mult)-1); the settings and
    their defaults are models.autoencoder_config.AutoencoderConfig's."""

    def __init__(self, ch, ch_mult, z_channels, num_res_blocks, dropout, in_channels):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        widths_in = [ch] + [ch * m for m in ch_mult]
        last = len(ch_mult) - 1
        self.conv_blocks = nn.ModuleList(
            Level([widths_in[i]] + [ch * m] * num_res_blocks, with_attn=i == last,
                  resample=None if i == last else Downsample, dropout=dropout)
            for i, m in enumerate(ch_mult))
        self.mid = middle(ch * ch_mult[-1], dropout)
        self.norm_out = group_norm(ch * ch_mult[-1])
        self.conv_out = nn.Conv2d(ch * ch_mult[-1], z_channels, 3, padding=1)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.conv_blocks:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Features (B, z_channels, h, w) -> image (B, 3, h*f, w*f), mirroring the encoder."""

    def __init__(self, ch, ch_mult, z_channels, num_res_blocks, dropout, out_channels):
        super().__init__()
        deepest = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, deepest, 3, padding=1)
        self.mid = middle(deepest, dropout)
        widths = [ch * m for m in reversed(ch_mult)]  # deepest first
        widths_in = [deepest] + widths[:-1]
        last = len(ch_mult) - 1
        self.conv_blocks = nn.ModuleList(
            Level([widths_in[i]] + [w] * (num_res_blocks + 1), with_attn=i == 0,
                  resample=None if i == last else Upsample, dropout=dropout)
            for i, w in enumerate(widths))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for level in self.conv_blocks:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))
