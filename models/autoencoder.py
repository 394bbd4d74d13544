"""VQ autoencoder (docs/model.md §3): LlamaGen VQ-16 encoder/decoder, a shared (optionally L2-normalized) codebook,
and the quantization pyramid that codes one image at every scale by re-encoding resized copies."""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.parametrize as parametrize
import yaml

from models.autoencoder_config import AutoencoderConfig
from models.vq_layers import Decoder, Encoder
from util.checkpoint import (CheckpointError, load_checkpoint, load_matching_state_dict, save_checkpoint,
                             unwrap_state_dict)
from util.config import ConfigError, write_yaml

# buffers of published/LlamaGen checkpoints that carry no weights of this model
IGNORED_KEYS = ('quantize.codebook_used',)


class UnitNormRows(nn.Module):
    """Parametrization: rows divided by their L2 norm."""

    def forward(self, w):
        return F.normalize(w, p=2, dim=1)


class Quantizer(nn.Module):
    """Codebook of V code vectors of width E; nearest-neighbour quantization."""

    def __init__(self, n_embed, embed_dim, normalize):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)
        if normalize:
            parametrize.register_parametrization(self.embedding, 'weight', UnitNormRows())
        self.register_buffer('initialized', torch.tensor(False))

    def codes(self, latents):
        """(B, E, h, w) -> nearest code index (B, h, w)."""
        B, E, h, w = latents.shape
        flat = latents.permute(0, 2, 3, 1).reshape(-1, E)
        return torch.cdist(flat, self.embedding.weight).argmin(dim=1).reshape(B, h, w)


class VQAutoencoder(nn.Module):
    """Encoder, decoder and shared codebook of an AutoencoderConfig; the stride f is 2^(len(ch_mult)-1)."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        c = self.config = config
        arch = dict(ch=c.ch, ch_mult=c.ch_mult, z_channels=c.z_channels, num_res_blocks=c.num_res_blocks,
                    dropout=c.dropout)
        self.encoder = Encoder(**arch, in_channels=c.in_channels)
        self.decoder = Decoder(**arch, out_channels=c.out_channels)
        self.quant_conv = nn.Conv2d(c.z_channels, c.embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(c.embed_dim, c.z_channels, 1)
        self.quantize = Quantizer(c.n_embed, c.embed_dim, c.normalize)
        self.register_buffer('cluster_usage_train', torch.zeros(c.n_embed))
        self.n_embed, self.embed_dim, self.normalize = c.n_embed, c.embed_dim, c.normalize
        self.in_channels, self.stride, self.resolution = c.in_channels, c.stride, c.resolution

    def _unit(self, z):
        return F.normalize(z, p=2, dim=1) if self.normalize else z

    def codebook(self):
        """Effective codebook (V, E): rows L2-normalized when `normalize`."""
        return self.quantize.embedding.weight

    def check_images(self, images, side=None):
        """Raise ValueError unless images are (B, C_in, H, W) with H, W multiples of the stride."""
        if images.ndim != 4:
            raise ValueError(f'images must be (B, {self.in_channels}, H, W), got shape {tuple(images.shape)}')
        B, C, H, W = images.shape
        if C != self.in_channels:
            raise ValueError(f'images must have {self.in_channels} channels, got {C} (shape {tuple(images.shape)})')
        if H % self.stride or W % self.stride:
            raise ValueError(f'image size {H}x{W} is not a multiple of the autoencoder stride {self.stride}')
        if side is not None and (H, W) != (side * self.stride,) * 2:
            raise ValueError(f'images are {H}x{W}; this pyramid needs {side * self.stride}x{side * self.stride} '
                             f'(top side {side} x stride {self.stride})')

    def encode(self, images):
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, E, H/f, W/f)."""
        self.check_images(images)
        return self._unit(self.quant_conv(self.encoder(images)))

    def decode(self, latents):
        """Latents (B, E, h, w) -> images (B, 3, h*f, w*f), roughly in [-1, 1]."""
        return self.decoder(self.post_quant_conv(self._unit(latents)))

    def quantize_latents(self, latents):
        """Latents (B, E, h, w) -> codes (B, h, w)."""
        return self.quantize.codes(self._unit(latents))

    def codes_to_latents(self, codes):
        """Codes (B, h, w) -> code vectors (B, E, h, w)."""
        return self.codebook()[codes].permute(0, 3, 1, 2)

    def rescale_latents(self, latents, side):
        """Bilinear resize (align_corners=False) to side x side, then re-normalize."""
        if latents.shape[-1] == side and latents.shape[-2] == side:
            return latents
        return self._unit(F.interpolate(latents, size=(side, side), mode='bilinear', align_corners=False))

    def pyramid_image(self, images, side):
        """The image that pyramid side codes: images (B, 3, H, W) bilinearly resized (align_corners=False, no
        antialias) to side * f pixels, or as they are when already that size."""
        if images.shape[-2:] == (side * self.stride,) * 2:
            return images
        return F.interpolate(images, size=(side * self.stride,) * 2, mode='bilinear', align_corners=False)

    def pyramid_codes(self, images, sides):
        """Quantization pyramid: codes (B, s, s) for each s in sides; the top side codes the image itself,
        smaller sides code the image resized to s*f (pyramid_image; not a residual pyramid)."""
        self.check_images(images, max(sides))
        return [self.quantize_latents(self.encode(self.pyramid_image(images, s))) for s in sides]


def read_autoencoder_config(config_path, overrides=None):
    """The AutoencoderConfig of a published autoencoder_config.yaml (`model: params:`), with `params`
    overrides; ConfigError naming the file when it is missing or unusable."""
    if not os.path.isfile(config_path):
        raise ConfigError(f'autoencoder config not found: {config_path} (see pretrained_models/README.md)')
    with open(config_path) as f:
        try:
            published = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ConfigError(f'{config_path}: not valid YAML ({str(e).splitlines()[0]})') from None
    return AutoencoderConfig.from_published(published, config_path, overrides)


def load_autoencoder(config_path, checkpoint_path=None, device='cpu', params=None, allow_unsafe=False):
    """Build the autoencoder of a config yaml, load its checkpoint if given, and return it in eval mode.

    Checkpoints: a plain state dict, {'state_dict': ...} or {'model': ...}, keys with or without `autoenc.`;
    LlamaGen's un-normalized `quantize.embedding.weight` loads into a normalized model's raw table."""
    model = VQAutoencoder(read_autoencoder_config(config_path, params))
    if checkpoint_path is not None:
        load_autoencoder_weights(model, checkpoint_path, allow_unsafe=allow_unsafe)
    return model.to(device).eval()


def load_autoencoder_weights(model, checkpoint_path, allow_unsafe=False):
    """Load an autoencoder checkpoint (any supported layout) into model, with clear errors."""
    sd = unwrap_state_dict(load_checkpoint(checkpoint_path, allow_unsafe), checkpoint_path, prefix='autoenc.')
    raw_key = 'quantize.embedding.parametrizations.weight.original'
    if model.normalize and 'quantize.embedding.weight' in sd and raw_key not in sd:
        sd[raw_key] = sd.pop('quantize.embedding.weight')
    if not model.normalize and raw_key in sd:
        raise CheckpointError(f'{checkpoint_path}: the checkpoint has a normalized codebook but the config says '
                              'normalize: false')
    own = model.state_dict()
    for key in ('quantize.initialized', 'cluster_usage_train'):
        sd.setdefault(key, own[key])
    load_matching_state_dict(model, sd, checkpoint_path, ignore=IGNORED_KEYS)
    model.quantize.initialized.fill_(True)


def save_autoencoder(autoencoder, folder):
    """The autoencoder's weights and architecture only (no optimizer state), as load_autoencoder reads them:
    folder/checkpoint.pth ({'state_dict': ...}) and folder/autoencoder_config.yaml; returns their paths."""
    weights, config = os.path.join(folder, 'checkpoint.pth'), os.path.join(folder, 'autoencoder_config.yaml')
    save_checkpoint({'state_dict': autoencoder.state_dict()}, weights)
    write_yaml(autoencoder.config.to_published(), config)
    return weights, config
