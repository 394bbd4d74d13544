"""The VQ autoencoder's architecture: every setting and its default, once (docs/model.md §3).

Published autoencoder configs (LlamaGen's schema: `model: target:, params: {n_embed, embed_dim, ...,
ddconfig: {ch, ch_mult, ...}}`) map onto AutoencoderConfig (from_published) and back (to_published); the
`target` class path is read, never imported."""
from dataclasses import dataclass, fields

from util.config import ConfigError, check_keys, from_mapping, to_mapping

PUBLISHED_TARGET = 'cbgen.autoencoder.VQModel'
# ddconfig keys of the LlamaGen/LDM schema that do not change this architecture (value checked if given)
DDCONFIG_FIXED = dict(norm_type='group', resamp_with_conv=True)
DDCONFIG_IGNORED = ('resolution',)  # the top-level `resolution` is the one used
TOP_LEVEL = ('n_embed', 'embed_dim', 'normalize', 'requant_pyramid_levels', 'resolution')  # params outside ddconfig


@dataclass(frozen=True)
class AutoencoderConfig:
    """LlamaGen VQ-16 by default: stride 2^(len(ch_mult)-1) = 16. normalize: L2-normalized codebook and
    latents; requant_pyramid_levels: how many pyramid scales, from the top down, the codebook trainer
    trains together (-1: all); resolution: the image size it trains at."""
    n_embed: int
    embed_dim: int
    normalize: bool = False
    requant_pyramid_levels: int = -1
    resolution: int = 256
    ch: int = 128
    ch_mult: tuple = (1, 1, 2, 2, 4)
    z_channels: int = 256
    num_res_blocks: int = 2
    dropout: float = 0.0
    in_channels: int = 3
    out_channels: int = 3

    def __post_init__(self):
        object.__setattr__(self, 'ch_mult', tuple(self.ch_mult))

    @property
    def stride(self):
        return 2 ** (len(self.ch_mult) - 1)

    @classmethod
    def from_published(cls, config, source, overrides=None):
        """From a published autoencoder config (a dict with `model: params:`), with `params` overrides;
        ConfigError naming source for anything this architecture cannot build."""
        params = config.get('model', {}).get('params') if isinstance(config, dict) else None
        if not isinstance(params, dict):
            raise ConfigError(f'{source}: expected a `model: params:` section (published autoencoder schema)')
        params = {**params, **(overrides or {})}
        ddconfig = dict(params.pop('ddconfig', None) or {})
        for key, value in DDCONFIG_FIXED.items():
            if ddconfig.pop(key, value) != value:
                raise ConfigError(f'{source}: ddconfig.{key} must be {value!r} for this autoencoder')
        for key in DDCONFIG_IGNORED:
            ddconfig.pop(key, None)
        architecture = {f.name for f in fields(cls)} - set(TOP_LEVEL)
        check_keys(ddconfig, architecture, 'model.params.ddconfig', source=source)
        check_keys(params, TOP_LEVEL + ('ddconfig',), 'model.params', source=source,
                   hint='; training settings go in args:')
        return from_mapping(cls, {**params, **ddconfig}, 'model.params', source)

    def to_published(self):
        """The published schema: {'model': {'target': ..., 'params': {..., 'ddconfig': {...}}}}."""
        values = to_mapping(self)
        params = {key: values.pop(key) for key in TOP_LEVEL}
        return {'model': {'target': PUBLISHED_TARGET, 'params': {**params, 'ddconfig': values}}}

