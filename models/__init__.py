"""Models: checkerboard order and scales, VQ autoencoder, transformer, generator and sampler."""
from models.autoencoder import load_autoencoder
from models.load import build_generator, load_generator

__all__ = ['load_autoencoder', 'build_generator', 'load_generator']
