"""The generator's configuration: every setting and its default, once (docs/model.md §4, §6).

The `model:` section of a training config, of a checkpoint's stored config and of the published
checkpoints' config.yaml maps onto GeneratorConfig (GeneratorConfig.from_dict); a resolved config written
back (to_dict) holds every default filled in."""
from dataclasses import dataclass, field, replace

from models.checkerboard import SCAN_ORDERS
from util.config import ConfigError, from_mapping, to_mapping


@dataclass(frozen=True)
class TransformerConfig:
    """`model.llama_config`: the transformer's size (published LlamaGen-style names)."""
    hidden_size: int
    num_attention_heads: int
    num_hidden_layers: int
    intermediate_size: int | None = None  # None: 8/3 of hidden_size, rounded up to a multiple of 256
    rms_norm_eps: float = 1e-6

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads or self.head_dim % 2:
            raise ConfigError(f'model.llama_config: hidden_size {self.hidden_size} must be num_attention_heads '
                              f'{self.num_attention_heads} times an even head width')

    @property
    def head_dim(self):
        return self.hidden_size // self.num_attention_heads


@dataclass(frozen=True)
class AutoencoderFiles:
    """`model.autoenc`: where the frozen autoencoder's architecture config and weights are, overrides of its
    `model.params`, and the sha256 its weights file must have (checked where it is loaded; None: not checked)."""
    config_path: str | None = None
    checkpoint_path: str | None = None
    params: dict | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class GeneratorConfig:
    """`model:` of a config. A class-conditional model (class_cond) has num_classes > 0, filled from the
    training data when the config leaves it at 0; num_mixing_layers None or 'all' mixes the rotary tables
    of every layer. one_scale: the pyramid is the top grid alone (scale_ratio and scale_min_size unused), a
    one-scale autoregressive model: with scan_order raster and one token per step, the plain raster model
    (LlamaGen-like); with the checkerboard, a one-scale parallel model."""
    img_size: int
    llama_config: TransformerConfig
    autoenc: AutoencoderFiles = field(default_factory=AutoencoderFiles)
    class_cond: bool = False
    num_classes: int = 0
    scale_ratio: float = 2.0
    scale_min_size: int = 1
    one_scale: bool = False
    num_blocks_per_scale: int = 8
    uncond_training_prob: float = 0.1
    random_block_size: bool = False
    random_replace: float = 0.0
    random_replace_sampled: bool = False
    use_head_mlp: bool = True
    num_mixing_layers: int | str | None = 2
    scan_order: str = 'checkerboard'
    head_weights_l2_loss: float = 1e-3

    def __post_init__(self):
        if self.scan_order not in SCAN_ORDERS:
            raise ConfigError(f'model.scan_order must be one of {SCAN_ORDERS}, got {self.scan_order!r}')
        if self.num_classes < 0 or self.num_classes and not self.class_cond:
            raise ConfigError(f'model.num_classes is {self.num_classes}: it must be 0 for an unconditional model '
                              '(class_cond: false) and > 0 for a class-conditional one (0 until the data fills it)')
        if self.num_blocks_per_scale < 1:
            raise ConfigError(f'model.num_blocks_per_scale must be >= 1, got {self.num_blocks_per_scale}')
        for key in ('uncond_training_prob', 'random_replace'):
            if not 0 <= getattr(self, key) <= 1:
                raise ConfigError(f'model.{key} must be in [0, 1], got {getattr(self, key)}')

    @classmethod
    def from_dict(cls, values, source=None):
        """From a `model:` section; ConfigError (one line, with 'did you mean') for an unknown key, a missing
        required one or a wrong type. source: the file it came from, for the message."""
        return from_mapping(cls, values, 'model', source)

    def to_dict(self):
        """Plain types, every default filled in: what checkpoints, config.yaml and the sweep record."""
        return to_mapping(self)

    def replace(self, **changes):
        """A new config with some settings changed (configs are frozen)."""
        return replace(self, **changes)
