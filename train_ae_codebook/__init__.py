"""Autoencoder training: codebook requantization on a frozen autoencoder (the published recipe) and full
VQ autoencoder training for small images, on the quantization pyramid."""
