"""DIITO: causal distillation of language models with interchange intervention training (Wu et al., 2022)."""

__version__ = "0.1.0"
