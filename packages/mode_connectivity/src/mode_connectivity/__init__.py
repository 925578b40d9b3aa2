"""Mode connectivity of pre-trained language models (Qin et al., EMNLP 2022) on lmlab."""

__version__ = "0.1.0"
