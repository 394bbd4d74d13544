"""Training objective on the quantization pyramid: VQ loss (codebook term + beta * commitment) at each scale
and, when the autoencoder itself trains, reconstruction loss (L1 + L2) at each scale."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def training_sides(sides, levels, p_random_scale, generator):
    """Pyramid sides of one training step, ascending: the top is a random side with probability p_random_scale
    (else the largest), and the pyramid keeps `levels` sides from the top down (-1: all)."""
    top = len(sides) - 1
    if torch.rand((), generator=generator) < p_random_scale:
        top = int(torch.randint(len(sides), (), generator=generator))
    below = sides[:top + 1]
    return below if levels < 0 else below[-levels:]


def scale_weights(sides):
    """Loss weight of each scale, proportional to sqrt(tokens) = side, summing to 1."""
    return [s / sum(sides) for s in sides]


class PyramidObjective(nn.Module):
    """A VQAutoencoder in training; forward computes the losses of one batch (DDP wraps this module).

    reconstruct: decode every scale and add the reconstruction loss (the autoencoder trains); else only the
    codebook learns and nothing is decoded. Frozen encoders run without autograd."""

    def __init__(self, autoencoder, beta, reconstruct):
        super().__init__()
        self.autoencoder = autoencoder
        self.beta = beta
        self.reconstruct = reconstruct
        encoder_params = [*autoencoder.encoder.parameters(), *autoencoder.quant_conv.parameters()]
        self.train_encoder = any(p.requires_grad for p in encoder_params)

    def forward(self, images, sides, quantize):
        """images (B, 3, H, W) in [-1, 1] with H = max(sides) * stride; quantize: False while the codebook is
        not yet initialized (latents are decoded as they are).
        Returns {'loss', 'vq', 'recon'} scalars and per side {'latents': (B, E, s, s), 'codes': (B, s, s)}."""
        ae = self.autoencoder
        zero = images.new_zeros(())
        vq, recon, latents, codes = zero, zero, {}, {}
        for side, weight in zip(sides, scale_weights(sides)):
            x = ae.pyramid_image(images, side)  # (B, 3, s*f, s*f)
            with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
                z = ae.encode(x)  # (B, E, s, s)
            latents[side] = z
            z_dec = z
            if quantize:
                codes[side] = ae.quantize_latents(z.detach())  # (B, s, s)
                zq = ae.codes_to_latents(codes[side])  # (B, E, s, s)
                codebook_term = F.mse_loss(zq, z.detach())
                commitment = F.mse_loss(z, zq.detach())
                vq = vq + weight * (codebook_term + self.beta * commitment)
                z_dec = z + (zq - z).detach()  # straight-through
            if self.reconstruct:
                y = ae.decode(z_dec)  # (B, 3, s*f, s*f)
                recon = recon + weight * (F.l1_loss(y, x) + F.mse_loss(y, x))
        return {'loss': vq + recon, 'vq': vq, 'recon': recon, 'latents': latents, 'codes': codes}
