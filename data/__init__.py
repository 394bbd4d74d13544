"""Datasets: ImageFolder and built-in shapes (TenCrop views of the ADM crop), and the token cache."""
