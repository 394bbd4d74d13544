"""How to sample (docs/model.md §7): one frozen object, built once from the command line or a config and
taken by the sampler, the likelihood, the graphed sampler, the showcase, editing, sample sets and the sweep."""
import math
from dataclasses import dataclass, replace

from models.checkerboard import format_schedule, serial_steps
from util.config import ConfigError, to_mapping
from util.precision import check_precision


@dataclass(frozen=True)
class SampleSettings:
    """cfg: classifier-free guidance scale (0: off), cond + cfg * (cond - uncond) from global step
    cfg_start_step on; steps_per_scale: the schedule, one number of steps for every scale or one per scale,
    coarse to fine (models.checkerboard.schedule_block_sizes); temperature (0: argmax); top_k (0: all codes);
    top_p (1: no nucleus cut); precision of the transformer (util.precision.PRECISIONS; decoding is fp32)."""
    cfg: float = 0.0
    cfg_start_step: int = 0
    steps_per_scale: int | tuple = 4
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    precision: str = 'fp32'

    def __post_init__(self):
        if isinstance(self.steps_per_scale, list):
            object.__setattr__(self, 'steps_per_scale', tuple(self.steps_per_scale))
        steps = self.steps_per_scale
        problems = [
            (not is_number(self.cfg) or self.cfg < 0, f'cfg must be a finite number >= 0, got {self.cfg!r}'),
            (not is_whole(self.cfg_start_step, 0), f'cfg_start_step must be a whole number >= 0, got '
                                                   f'{self.cfg_start_step!r}'),
            (not all(is_whole(k, 1) for k in (steps if isinstance(steps, tuple) else (steps,))) or steps == (),
             f'steps_per_scale must be whole numbers >= 1, got {steps!r}'),
            (not is_number(self.temperature) or self.temperature < 0,
             f'temperature must be a finite number >= 0, got {self.temperature!r}'),
            (not is_whole(self.top_k, 0), f'top_k must be a whole number >= 0, got {self.top_k!r}'),
            (not is_number(self.top_p) or not 0 < self.top_p <= 1, f'top_p must be in (0, 1], got {self.top_p!r}')]
        for bad, message in problems:
            if bad:
                raise ConfigError(f'sampling settings: {message}')
        try:
            check_precision(self.precision, 'cuda')  # whether the device runs it: SampleSettings.check
        except ValueError as e:
            raise ConfigError(f'sampling settings: {e}') from None

    def check(self, sides, device):
        """The schedule's total serial steps on a pyramid of these sides; ConfigError if the schedule does
        not fit it or the precision does not run on device."""
        try:
            check_precision(self.precision, device)
            return serial_steps(sides, self.steps_per_scale)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @property
    def guided(self):
        return self.cfg > 0

    def replace(self, **changes):
        """New settings with some changed (settings are frozen)."""
        return replace(self, **changes)

    def to_dict(self):
        """Plain types (the schedule as an int or a list), for JSON and YAML records."""
        return to_mapping(self)

    def describe(self):
        """One line for logs: 'cfg 2 from step 1, schedule 4, temperature 1, ...'."""
        cut = (f', top-k {self.top_k}' if self.top_k else '') + (f', top-p {self.top_p}' if self.top_p < 1 else '')
        guidance = f'cfg {self.cfg:g} from step {self.cfg_start_step}' if self.guided else 'no guidance'
        return (f'{guidance}, schedule {format_schedule(self.steps_per_scale)}, temperature {self.temperature:g}'
                f'{cut}, {self.precision}')


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value, low):
    return isinstance(value, int) and not isinstance(value, bool) and value >= low
