"""Invariant language modeling (Peyrard et al., EMNLP 2022): a masked LM body shared by n environment heads,
prediction = mean of the heads' logits, trained with the IRM-games round-robin (body + head e per update)."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["InvariantMLM", "InvariantTrainer", "__version__"]


def __getattr__(name: str) -> Any:  # lazy: keeps `invariant-lm --help` fast
    if name == "InvariantMLM":
        from invariant_lm.model import InvariantMLM

        return InvariantMLM
    if name == "InvariantTrainer":
        from invariant_lm.trainer import InvariantTrainer

        return InvariantTrainer
    raise AttributeError(name)
