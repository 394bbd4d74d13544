"""Sampling as one CUDA graph: for a fixed batch size and fixed settings, every step of
models.sampler.draw_pyramid has a static shape (the schedule fixes the block sizes, the KV cache is
preallocated, the random numbers are drawn before the steps), so the whole run is captured once and replayed
with new labels and seeds: one launch instead of one per kernel, which is what bounds sampling on a GPU.

On a CPU the same static path runs without capture. Either way the codes equal models.sampler.sample's for the
same labels and seeds (tests/test_generator.py on a CPU, tests/gpu_check.py on a GPU).
"""
import torch

from models.sample_settings import SampleSettings
from models.sampler import SampleOutput, check_labels, decode_scales, draw_pyramid, sample_uniforms

WARMUP_RUNS = 2  # eager runs on a side stream before capture, as CUDA graphs need


class GraphedSampler:
    """Samples batches of batch_size with one SampleSettings; call it with labels (or nothing, unconditional)
    and one seed per sample."""

    def __init__(self, model, batch_size, settings: SampleSettings):
        device = model.seq_positions.device
        settings.check(model.sides, device)
        self.model, self.batch_size, self.settings = model, batch_size, settings
        self.labels = torch.zeros(batch_size, dtype=torch.long, device=device) if model.class_cond else None
        self.uniforms = torch.zeros(batch_size, model.num_positions, device=device)
        self.graph, self.output = None, None

    def steps(self):
        """The sampling steps on the static buffers."""
        return draw_pyramid(self.model, self.labels, self.uniforms, self.settings, autocast_cache=False)

    def capture(self):
        """Warm up on a side stream, then capture the steps into a CUDA graph (its outputs stay static)."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                self.steps()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = self.steps()

    @torch.no_grad()
    def __call__(self, labels=None, seeds=None, decode='top'):
        labels, batch_size = check_labels(self.model, labels, None if self.model.class_cond else self.batch_size)
        if batch_size != self.batch_size or seeds is None or len(seeds) != batch_size:
            raise ValueError(f'this sampler draws batches of {self.batch_size}: give that many labels and seeds')
        if labels is not None:
            self.labels.copy_(labels)
        self.uniforms.copy_(sample_uniforms(seeds, self.model.num_positions, self.uniforms.device))
        if self.uniforms.device.type == 'cuda':
            if self.graph is None:
                self.capture()
            self.graph.replay()
            drawn = self.output  # the graph's static outputs: copied below, the next replay overwrites them
        else:
            drawn = self.steps()
        out = SampleOutput(codes=[c.clone() for c in drawn.codes], images=[],
                           maps={k: [m.clone() for m in v] for k, v in drawn.maps.items()},
                           labels=None if labels is None else labels.clone())
        return decode_scales(self.model, out, decode)
