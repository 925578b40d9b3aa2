"""CaMeLS: meta-learned per-token loss weights for online adaptation (Hu et al., EMNLP 2023)."""

__version__ = "0.1.0"
