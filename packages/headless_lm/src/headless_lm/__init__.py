"""Headless language models with contrastive weight tying (Godey, de la Clergerie, Sagot, ICLR 2024)."""

__version__ = "0.1.0"
