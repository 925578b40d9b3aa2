"""CrossFit-style text-to-text task data (spec §2): tsv parsing, formatting, split halves, tokenisation,
dynamic padding.

A task directory `<root>/<task>/` holds `<task>_{train,dev,test}.tsv`; each line is `input<TAB>answer[<TAB>...]`.
Differs from the reference: padding is dynamic per batch (the reference padded to 512), eval batches are
sorted by length, and a malformed row is an error naming file and line instead of being skipped.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from lmlab.errors import LmlabError

SPLITS = ("train", "dev", "test")
SENTINEL = "<extra_id_0>"


@dataclass
class Example:
    input: str
    answers: list[str]


def read_tsv(path: str | Path) -> list[Example]:
    """Parse one CrossFit tsv: `input<TAB>answer1[<TAB>answer2 ...]`, no header, at least one answer."""
    path = Path(path)
    if not path.is_file():
        raise LmlabError(f"data file {path} does not exist")
    examples = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2 or not fields[0].strip():
                raise LmlabError(
                    f"{path}:{lineno}: expected 'input<TAB>answer[<TAB>answer...]' (at least 2 tab-separated "
                    f"columns), got {len(fields)} column(s); fix the row or remove it"
                )
            examples.append(Example(fields[0], fields[1:]))
    if not examples:
        raise LmlabError(f"data file {path} has no examples")
    return examples


def task_name_of(task_dir: str | Path) -> str:
    return Path(task_dir).resolve().name


def split_file(task_dir: str | Path, split: str) -> Path:
    """The tsv of `split` in a task directory; the prefix is the task name (`--one_prefix` semantics)."""
    task_dir = Path(task_dir)
    if not task_dir.is_dir():
        raise LmlabError(f"task directory {task_dir} does not exist")
    name = task_name_of(task_dir)
    path = task_dir / f"{name}_{split}.tsv"
    if path.is_file():
        return path
    found = sorted(task_dir.glob(f"*_{split}.tsv"))
    if found:
        return found[0]
    raise LmlabError(f"task directory {task_dir} has no {split} split: expected {path.name}")


def apply_datasplit(examples: list[Example], datasplit: str) -> list[Example]:
    """split1 = first floor(n/2) lines in file order, split2 = the rest; "" keeps everything."""
    if not datasplit:
        return examples
    half = len(examples) // 2
    if datasplit == "split1":
        return examples[:half]
    if datasplit == "split2":
        return examples[half:]
    raise LmlabError(f"--datasplit must be split1, split2 or empty, not {datasplit!r}")


def load_split(
    task_dir: str | Path, split: str, datasplit: str = "", choose_1000: bool = False
) -> list[Example]:
    examples = read_tsv(split_file(task_dir, split))
    if split == "train":
        examples = apply_datasplit(examples, datasplit)
    elif choose_1000:
        examples = examples[:1000]
    return examples


def format_input(text: str, task_name: str, lowercase: bool = False, another_bos: bool = False) -> str:
    """Encoder input: `" [<task>] " + input` (leading space, square brackets)."""
    out = " [" + task_name + "] " + text
    if lowercase:
        out = out.lower()
    if another_bos:
        out = "<s> " + out
    return out


def format_target(answer: str, lowercase: bool = False, another_bos: bool = False) -> str:
    """Decoder target: the sentinel immediately followed by the answer (EOS added by the tokenizer)."""
    if lowercase:
        answer = answer.lower()
    out = SENTINEL + answer
    if another_bos:
        out = "<s> " + out
    return out


@dataclass
class TextTaskOptions:
    max_input_length: int = 512
    max_output_length: int = 64
    do_lowercase: bool = False
    append_another_bos: bool = False


class EncodedSplit:
    """One tokenised split: encoder ids per example, target ids for every answer. Tokenised once."""

    def __init__(self, examples: list[Example], tokenizer, task_name: str, opts: TextTaskOptions):
        self.examples = examples
        self.task_name = task_name
        self.golds = [ex.answers for ex in examples]
        inputs = [
            format_input(ex.input, task_name, opts.do_lowercase, opts.append_another_bos) for ex in examples
        ]
        enc = tokenizer(inputs, truncation=True, max_length=opts.max_input_length, add_special_tokens=True)
        self.input_ids = [list(ids) for ids in enc["input_ids"]]
        flat_answers = [a for ex in examples for a in ex.answers]
        targets = [format_target(a, opts.do_lowercase, opts.append_another_bos) for a in flat_answers]
        tenc = tokenizer(targets, truncation=True, max_length=opts.max_output_length, add_special_tokens=True)
        self.target_ids: list[list[list[int]]] = []
        k = 0
        for ex in examples:
            self.target_ids.append([list(t) for t in tenc["input_ids"][k : k + len(ex.answers)]])
            k += len(ex.answers)
        self.pad_id = tokenizer.pad_token_id

    def __len__(self) -> int:
        return len(self.examples)


def pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(
    input_ids: list[list[int]], labels: list[list[int]] | None, pad_id: int
) -> dict[str, torch.Tensor]:
    """Dynamic padding; label pads are -100."""
    batch = {"input_ids": pad(input_ids, pad_id)}
    # mask by length, not by id (a real pad id inside a sequence stays attended)
    mask = torch.zeros_like(batch["input_ids"])
    for i, s in enumerate(input_ids):
        mask[i, : len(s)] = 1
    batch["attention_mask"] = mask
    if labels is not None:
        batch["labels"] = pad(labels, -100)
    return batch


def eval_batches(split: EncodedSplit, batch_size: int) -> list[tuple[list[int], dict[str, torch.Tensor]]]:
    """Batches sorted by input length (descending), labels = first answer; returns (indices, batch) pairs."""
    order = sorted(range(len(split)), key=lambda i: -len(split.input_ids[i]))
    out = []
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        out.append(
            (
                idx,
                collate(
                    [split.input_ids[i] for i in idx], [split.target_ids[i][0] for i in idx], split.pad_id
                ),
            )
        )
    return out


class TrainDataset(torch.utils.data.Dataset):
    """Training items, indexed by (position in the sample stream, example index) as `PositionedSampler` yields
    them: a multi-answer example picks one answer uniformly at random with a generator seeded by (seed,
    position), so the pick is the same whether or not the run was interrupted and resumed before it."""

    def __init__(self, split: EncodedSplit, seed: int = 0):
        self.split = split
        self.seed = seed

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]) -> tuple[list[int], list[int]]:
        position, i = key
        targets = self.split.target_ids[i]
        if len(targets) == 1:
            return self.split.input_ids[i], targets[0]
        pick = random.Random(f"{self.seed}:{position}").randrange(len(targets))
        return self.split.input_ids[i], targets[pick]


class PositionedSampler:
    """`StepSampler`'s indices paired with their position in the stream of all ranks together."""

    def __init__(self, sampler):
        self.sampler = sampler

    def __iter__(self):
        s = self.sampler
        for k, i in enumerate(s):
            yield s.rank + (s.start + k) * s.world_size, i


def make_train_collate(pad_id: int):
    def fn(items):
        return collate([a for a, _ in items], [b for _, b in items], pad_id)

    return fn


def train_loader(split: EncodedSplit, seed: int, start: int, batch_size: int, pad_id: int):
    """The training DataLoader of `train`, `curve` and `layer-mix`: an endless shuffled stream that starts at
    this rank's `start`-th sample (StepSampler), with answers picked per stream position."""
    from lmlab.training import StepSampler

    sampler = PositionedSampler(StepSampler(len(split), seed=seed, start=start))
    return torch.utils.data.DataLoader(
        TrainDataset(split, seed),
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=make_train_collate(pad_id),
    )


def label_candidates(examples: list[Example]) -> list[str]:
    """Distinct first answers in file order (the candidate set of `--eval_mode rank` and cartography)."""
    seen: dict[str, None] = {}
    for ex in examples:
        seen.setdefault(ex.answers[0], None)
    return list(seen)
