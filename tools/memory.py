"""Training memory per GPU of a generator config under DDP and FSDP, with and without gradient checkpointing:
the model state from the parameter count, the activations measured (the bytes autograd keeps for the backward
pass, counted for one image by a real forward of the config's widths with one and two layers, on the CPU).

    python -m tools.memory --config configs/config_256_L.yaml configs/config_256_XL.yaml configs/config_256_2B.yaml \
        --gpus 8 --batch_size 64 --precision bf16

Per GPU, for P trainable parameters, N GPUs, a layers, B images of T tokens (docs/benchmarks.md):
    state        = (4 weights + 4 gradients + 8 AdamW + 4 EMA) * P bytes, / N under FSDP
    gathered     = 2 * 2 * P_layer bytes under FSDP (the bf16 weights of the layer running and the next one)
    activations  = B * (outside + a * per_layer) without checkpointing,
                   B * (outside + a * layer_input + per_layer) with it (one layer is recomputed at a time)
The CUDA allocator's fragmentation and workspaces (typically 5-15%) come on top."""
import argparse
import dataclasses

import torch
import yaml

from models import build_generator
from models.generator_config import GeneratorConfig
from util.precision import autocast

STATE_BYTES = {'weights': 4, 'gradients': 4, 'AdamW': 8, 'EMA': 4}  # per fp32 parameter


def read_config(path, layers=None):
    """The GeneratorConfig of a training config, optionally with another number of layers."""
    with open(path) as f:
        config = GeneratorConfig.from_dict(yaml.safe_load(f)['model'], source=path)
    if config.class_cond and not config.num_classes:
        config = config.replace(num_classes=10)
    if layers is not None:
        config = config.replace(llama_config=dataclasses.replace(config.llama_config, num_hidden_layers=layers))
    return config


def trainable_parameters(model):
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith('autoenc.'))


def saved_bytes(config, batch, precision, checkpointing):
    """Bytes autograd keeps for the backward pass of one training forward of batch images (each storage once)."""
    torch.manual_seed(0)
    model = build_generator(config, load_autoencoder_checkpoint=False).train()
    model.llama.grad_checkpointing = checkpointing
    codes = [torch.randint(model.vocab_size, (batch, s, s)) for s in model.sides]
    storages = {}

    def keep(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor), autocast(torch.device('cpu'),
                                                                                         precision):
        loss, _ = model(codes, torch.zeros(batch, dtype=torch.long), torch.Generator().manual_seed(0))
    del loss
    return sum(storages.values())


@dataclasses.dataclass
class Estimate:
    params: int
    layer_params: int
    outside: float  # activation bytes per image outside the layers
    per_layer: float  # per image and layer, no checkpointing
    layer_input: float  # per image and layer, checkpointed
    layers: int

    def per_gpu(self, gpus, batch, fsdp, checkpointing):
        """{part: bytes} per GPU."""
        shard = gpus if fsdp else 1
        parts = {name: size * self.params / shard for name, size in STATE_BYTES.items()}
        if fsdp:
            parts['gathered layers'] = 2 * 2 * self.layer_params
        kept = self.layers * (self.layer_input if checkpointing else self.per_layer)
        parts['activations'] = batch * (self.outside + kept + (self.per_layer if checkpointing else 0))
        return parts


def per_image(path, layers, precision, checkpointing):
    """Saved bytes per image (those of 2 images less those of 1: what a batch holds once, such as autocast's
    bf16 copies of the weights, drops out)."""
    config = read_config(path, layers)
    return saved_bytes(config, 2, precision, checkpointing) - saved_bytes(config, 1, precision, checkpointing)


def estimate(path, precision):
    """The Estimate of a config: parameters counted on the meta device, activations measured with 1 and 2
    layers at the config's widths."""
    config = read_config(path)
    with torch.device('meta'):
        model = build_generator(config, load_autoencoder_checkpoint=False, device='meta')
    params = trainable_parameters(model)
    layer_params = sum(p.numel() for p in model.llama.layers[0].parameters())
    one, two = (per_image(path, n, precision, False) for n in (1, 2))
    one_ckpt, two_ckpt = (per_image(path, n, precision, True) for n in (1, 2))
    return Estimate(params, layer_params, outside=2 * one - two, per_layer=two - one,
                    layer_input=two_ckpt - one_ckpt, layers=config.llama_config.num_hidden_layers)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--config', nargs='+', required=True)
    p.add_argument('--gpus', type=int, default=8)
    p.add_argument('--batch_size', type=int, default=64, help='images per GPU')
    p.add_argument('--precision', default='bf16', choices=['fp32', 'bf16'], help='autocast of the activations')
    args = p.parse_args(argv)
    gib = 2 ** 30
    print(f'{args.gpus} GPUs, {args.batch_size} images per GPU, activations in {args.precision} autocast; GiB per GPU')
    print('| config | parameters | activations per image: outside layers + per layer (checkpointed) | '
          'DDP | FSDP | FSDP + checkpointing | parts of FSDP + checkpointing |')
    print('| --- | --- | --- | --- | --- | --- | --- |')
    for path in args.config:
        e = estimate(path, args.precision)
        totals = [sum(e.per_gpu(args.gpus, args.batch_size, fsdp, ckpt).values()) / gib
                  for fsdp, ckpt in ((False, False), (True, False), (True, True))]
        parts = ', '.join(f'{name} {size / gib:.2f}'
                          for name, size in e.per_gpu(args.gpus, args.batch_size, True, True).items())
        print(f'| {path} | {e.params / 1e9:.2f}B, {e.layers} layers | {e.outside / 2 ** 20:.1f} MiB + {e.layers} x '
              f'{e.per_layer / 2 ** 20:.1f} MiB ({e.layer_input / 2 ** 20:.2f} MiB) | '
              + ' | '.join(f'{t:.1f}' for t in totals) + f' | {parts} |')


if __name__ == '__main__':
    main()
