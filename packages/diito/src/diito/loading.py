"""Loading a stock Hugging Face model with the head a command needs.

transformers prints a LOAD REPORT table whenever checkpoint and class differ, and silently gives a missing head
random weights. Here the table becomes one line, and a checkpoint without the head the command relies on (a
`BertModel` folder given as the teacher) is refused in one line naming the missing weights, unless the user asks
for a random head (`--allow_random_head true`, then a loud warning). Fine-tuning commands expect a new head and
only say, in one line, which weights start random and which checkpoint weights go unused.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from lmlab.errors import LmlabError


def module_groups(keys) -> str:
    """The modules `keys` belong to, e.g. 'cls.predictions (6 weights)', for one-line messages."""
    counts: dict[str, int] = {}
    for key in sorted(keys):
        parts = key.split(".")[:-1]
        group = ".".join(parts[:2]) if parts else key
        counts[group] = counts.get(group, 0) + 1
    return ", ".join(f"{g} ({n} weight{'s' if n > 1 else ''})" for g, n in counts.items())


def _not_the_report(record: logging.LogRecord) -> bool:
    """Drops transformers' LOAD REPORT table and its note on untied head weights: what they say about missing
    and unused weights is said here in one line. Other warnings pass."""
    message = str(record.getMessage())
    return " LOAD REPORT" not in message and not message.startswith("This checkpoint seem corrupted")


def _from_pretrained(cls: Any, name: str, what: str, **kwargs: Any) -> tuple[Any, dict]:
    # a filter, not a higher level: transformers runs extra checks (and warns) when this logger's level is raised
    report = logging.getLogger("transformers.modeling_utils")
    report.addFilter(_not_the_report)
    try:
        return cls.from_pretrained(name, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as err:  # no such folder / hub name; a config this class does not support
        raise LmlabError(f"cannot load {what} {name}: {str(err).strip().splitlines()[0]}") from err
    finally:
        report.removeFilter(_not_the_report)


def load_with_head(
    cls: Any, name: str, what: str, head: str, prog: str, allow_random_head: bool | None = None, **kwargs: Any
) -> Any:
    """`cls.from_pretrained(name)` for a model whose `head` (e.g. "masked-LM head") must come from the checkpoint:
    missing weights are an error naming them (or, with `allow_random_head`, a loud warning; None: the command has
    no such flag); unused checkpoint weights (e.g. BERT's pooler) are said in one line."""
    model, info = _from_pretrained(cls, name, what, **kwargs)
    missing, unused = info["missing_keys"], info["unexpected_keys"]
    if missing:
        found = (getattr(model.config, "architectures", None) or ["a checkpoint"])[0]
        line = (
            f"{what} {name} is {found}, without the {head} {type(model).__name__} needs: "
            f"{module_groups(missing)} missing"
        )
        if not allow_random_head:
            hint = (
                "" if allow_random_head is None else ", or pass --allow_random_head true to start it random"
            )
            raise LmlabError(f"{line}; give a checkpoint with that head{hint}")
        print(
            f"[{prog}] WARNING: {line}. These weights are RANDOM (--allow_random_head): the {what}'s outputs "
            "mean nothing until they are trained",
            file=sys.stderr,
        )
    if unused:
        print(f"[{prog}] {what}: checkpoint weights not used: {module_groups(unused)}", file=sys.stderr)
    return model


def load_for_finetuning(cls: Any, name: str, prog: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(name)` for fine-tuning: a new task head is expected; one line says which weights
    start random and which checkpoint weights (e.g. the MLM head) are not used."""
    model, info = _from_pretrained(cls, name, "model", **kwargs)
    parts = []
    if info["missing_keys"]:
        parts.append(f"new (random) {module_groups(info['missing_keys'])}")
    if info["unexpected_keys"]:
        parts.append(f"not used from the checkpoint: {module_groups(info['unexpected_keys'])}")
    if parts:
        print(f"[{prog}] {type(model).__name__} from {name}: {'; '.join(parts)}", file=sys.stderr)
    return model
