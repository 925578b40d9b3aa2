"""Environments, tokenisation, MLM masking and the deterministic per-environment batch streams.

Every random draw (shuffling of an environment's stream, dynamic masks) comes from a generator seeded by
(seed, environment index, position in the stream), so the batch of any update is a pure function of the seed
and the update index. That is what makes resume exact without saving RNG states, and it makes ERM, IRM and
ensembling runs with the same seed see exactly the same data.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from lmlab.errors import LmlabError

log = logging.getLogger(__name__)


def _seeded_generator(*keys: int) -> torch.Generator:
    state = np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


# ---------------------------------------------------------------------------------------------- environments
def env_name_of(path: Path) -> str:
    """The reference's environment name: the file name up to its first '.'."""
    return path.name.split(".")[0]


def _read_lines(path: Path, what: str = "environment file") -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LmlabError(f"cannot read {what} {path}: {err}") from err
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    if not lines:
        raise LmlabError(f"{what} {path} is empty; give at least one non-empty line or remove it")
    return lines


def load_environments(
    train_file: str | Path | None = None,
    train_files: Sequence[str | Path] | None = None,
    env_column: str | None = None,
):
    """Environments as {name: Dataset[text]}, sorted by name (the order of heads and of the round-robin).

    `train_file` is a folder holding one `*.txt` file per environment (the reference's semantics), or, with
    `env_column`, one JSON-lines/CSV file whose column gives each row's environment; `train_files` is an
    explicit list of text files. Names are file names up to the first '.'; two files with the same name, an
    empty or unreadable file, or no file at all are errors.
    """
    from datasets import Dataset

    if train_files:
        files = [Path(f) for f in train_files]
        for f in files:
            if not f.is_file():
                raise LmlabError(f"environment file {f} does not exist")
    elif train_file is not None and env_column is not None:
        return _environments_from_table(Path(train_file), env_column)
    elif train_file is not None:
        folder = Path(train_file)
        if not folder.is_dir():
            raise LmlabError(
                f"--train_file {folder} is not a folder; give a folder with one .txt file per environment"
            )
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt")
        if not files:
            raise LmlabError(
                f"--train_file {folder} holds no .txt file; put one text file per environment in it"
            )
    else:
        raise LmlabError(
            "no training data: give --train_file DIR (one .txt file per environment) or --train_files"
        )
    envs: dict[str, Dataset] = {}
    origin: dict[str, Path] = {}
    for f in files:
        name = env_name_of(f)
        if not name:
            raise LmlabError(f"{f}: an environment file name must not start with '.'")
        if name in envs:
            raise LmlabError(f"{origin[name]} and {f} both give environment {name!r}; rename one")
        if "validation" in f.name:
            log.warning("%s contains 'validation' but is used as a training environment", f)
        envs[name] = Dataset.from_dict({"text": _read_lines(f)})
        origin[name] = f
    return dict(sorted(envs.items()))


def _environments_from_table(path: Path, env_column: str) -> dict:
    """{environment: Dataset[text]} from one table whose `env_column` names each row's environment. A CSV/TSV is
    read strictly by lmlab's `read_table` (a row with a wrong field count, an empty text or environment cell is an
    error naming its line); JSON lines and folders go through `load_corpus`, and a row whose text is not a
    non-empty string or whose environment is missing is an error naming the row. No row is dropped."""
    from datasets import Dataset
    from lmlab.data import load_corpus, read_table

    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        frame = read_table(path, required_columns=("text", env_column), non_empty=("text", env_column))
        texts, labels = list(frame["text"]), list(frame[env_column])
    else:
        data = load_corpus(path, required_columns=("text", env_column))
        texts, labels = data["text"], data[env_column]
        for row, (text, label) in enumerate(zip(texts, labels, strict=True), 1):
            if not isinstance(text, str) or not text.strip():
                raise LmlabError(
                    f"{path}, row {row}: the text is {text!r}; give every row a non-empty string in column 'text'"
                )
            if label is None or not str(label).strip():
                raise LmlabError(
                    f"{path}, row {row}: column {env_column!r} is empty; name every row's environment"
                )
    by_env: dict[str, list[str]] = {}
    for text, label in zip(texts, labels, strict=True):
        by_env.setdefault(str(label), []).append(text)
    return {name: Dataset.from_dict({"text": by_env[name]}) for name in sorted(by_env)}


def load_text_file(path: str | Path):
    from datasets import Dataset

    return Dataset.from_dict({"text": _read_lines(Path(path), "evaluation file")})


def default_max_seq_length(tokenizer, config=None, requested: int | None = None) -> int:
    """min(tokenizer.model_max_length, 1024), clamped to the model's positions (with a warning if asked more)."""
    limit = getattr(tokenizer, "model_max_length", 1024) or 1024
    limit = min(int(limit) if limit < 1e9 else 1024, 1024)
    if config is not None:
        pos = getattr(config, "max_position_embeddings", None)
        if pos is not None:
            offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
            limit = min(limit, int(pos) - offset)
    if requested is None:
        return limit
    if requested > limit:
        log.warning("--max_seq_length %d is longer than the model allows; using %d", requested, limit)
        return limit
    return requested


def tokenize(
    dataset, tokenizer, max_seq_length: int, line_by_line: bool = False, num_proc: int | None = None
):
    """Grouped blocks of exactly `max_seq_length` tokens (groups of 1000 lines, remainders dropped), or one
    truncated sequence per line."""
    from lmlab.data import tokenize_and_group

    return tokenize_and_group(
        dataset, tokenizer, max_seq_length, line_by_line=line_by_line, num_proc=num_proc
    )


# ---------------------------------------------------------------------------------------------- masking
class MLMCollator:
    """Pads a list of `input_ids` lists and applies BERT masking: each non-special, non-pad token is selected
    with `mlm_probability`; selected: 80% mask token, 10% random token, 10% unchanged; labels -100 elsewhere.
    Draws from `generator` (deterministic when given)."""

    def __init__(self, tokenizer, mlm_probability: float = 0.15, pad_to_length: int | None = None) -> None:
        if tokenizer.mask_token_id is None:
            raise LmlabError("the tokenizer has no mask token; masked language modeling needs one")
        if not 0.0 < mlm_probability < 1.0:
            raise LmlabError(f"--mlm_probability must be in (0, 1), got {mlm_probability}")
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.vocab = len(tokenizer)
        self.p = mlm_probability
        self.pad_to_length = pad_to_length

    def pad(self, examples: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(e) for e in examples)
        if self.pad_to_length:
            length = max(length, self.pad_to_length)
        ids = torch.full((len(examples), length), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(examples), length), dtype=torch.long)
        for i, e in enumerate(examples):
            ids[i, : len(e)] = torch.as_tensor(list(e), dtype=torch.long)
            att[i, : len(e)] = 1
        return ids, att

    def mask(self, ids: torch.Tensor, att: torch.Tensor, generator: torch.Generator | None = None):
        from lmlab.masking import bernoulli_positions, corrupt

        maskable = (att == 1) & ~torch.isin(ids, self.special_ids)
        selected = bernoulli_positions(maskable, self.p, generator)
        return corrupt(ids, selected, mask_token_id=self.mask_id, random_ids=self.vocab, generator=generator)

    def __call__(self, examples, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        examples = [e["input_ids"] if isinstance(e, dict) else e for e in examples]
        ids, att = self.pad(examples)
        inputs, labels = self.mask(ids, att, generator)
        return {"input_ids": inputs, "attention_mask": att, "labels": labels}


def make_collator(tokenizer, mlm_probability: float = 0.15, pad_to_length: int | None = None) -> MLMCollator:
    return MLMCollator(tokenizer, mlm_probability, pad_to_length)


# ---------------------------------------------------------------------------------------------- streams
class EnvironmentStreams:
    """One infinite, reshuffling (drop-last) batch stream per environment, addressed by position.

    `batch(env_index, k)` is the k-th batch of that environment: epoch k // batches_per_epoch of a permutation
    seeded by (seed, env, epoch), masked with a generator seeded by (seed, env, k).

    With `world_size` W > 1 (data-parallel training) the stream is one of *global* batches of W x `batch_size`
    sequences, and rank r gets rows [r B, (r + 1) B) of each global batch (`rank` is set by the trainer once it
    knows it). The global batch, masks included, is exactly the batch a single process with batch size W x B
    sees, so the ranks draw different samples and together they are the single-process run."""

    def __init__(
        self,
        env_data: dict,
        collator: MLMCollator,
        batch_size: int,
        seed: int,
        world_size: int = 1,
        rank: int = 0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise LmlabError(f"rank {rank} of world size {world_size} is not a valid data-parallel position")
        self.names = list(env_data)
        self.rows = {name: list(ds["input_ids"]) for name, ds in env_data.items()}
        self.collator = collator
        self.local_batch_size = batch_size
        self.world_size = world_size
        self.rank = rank
        self.batch_size = batch_size * world_size  # the global batch: what the stream is cut into
        self.seed = seed
        for name, rows in self.rows.items():
            if len(rows) < self.batch_size:
                what = f"one batch of {self.batch_size}"
                if world_size > 1:
                    what = f"one global batch of {self.batch_size} ({world_size} devices x {batch_size})"
                raise LmlabError(
                    f"environment {name!r} has {len(rows)} sequence(s), fewer than {what}; "
                    "give it more text or lower --per_device_train_batch_size / --max_seq_length"
                )
        self._perm_cache: dict[tuple[int, int], torch.Tensor] = {}

    def batches_per_epoch(self, env_index: int) -> int:
        return len(self.rows[self.names[env_index]]) // self.batch_size

    def min_batches_per_epoch(self) -> int:
        return min(self.batches_per_epoch(i) for i in range(len(self.names)))

    def _perm(self, env_index: int, epoch: int) -> torch.Tensor:
        key = (env_index, epoch)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 64:
                self._perm_cache.clear()
            n = len(self.rows[self.names[env_index]])
            self._perm_cache[key] = torch.randperm(
                n, generator=_seeded_generator(self.seed, env_index, epoch, 1)
            )
        return self._perm_cache[key]

    def batch(self, env_index: int, k: int) -> dict[str, torch.Tensor]:
        bpe = self.batches_per_epoch(env_index)
        epoch, j = divmod(k, bpe)
        idx = self._perm(env_index, epoch)[j * self.batch_size : (j + 1) * self.batch_size]
        rows = self.rows[self.names[env_index]]
        examples = [rows[i] for i in idx.tolist()]
        batch = self.collator(examples, generator=_seeded_generator(self.seed, env_index, k, 2))
        if self.world_size == 1:
            return batch
        lo = self.rank * self.local_batch_size
        batch = {key: v[lo : lo + self.local_batch_size] for key, v in batch.items()}
        width = max(
            1, int(batch["attention_mask"].sum(1).max())
        )  # drop columns that are padding on this rank
        if self.collator.pad_to_length:
            width = max(width, min(self.collator.pad_to_length, batch["input_ids"].shape[1]))
        return {key: v[:, :width].contiguous() for key, v in batch.items()}


def eval_batches(dataset, collator: MLMCollator, batch_size: int, mask_seed: int = 1234) -> list[dict]:
    """The evaluation batches of a tokenised data set, in order, with masks drawn once from a generator seeded
    by `mask_seed`: every model evaluated on the same file and tokenizer sees the same masked positions."""
    rows = list(dataset["input_ids"])
    gen = torch.Generator().manual_seed(int(mask_seed))
    return [collator(rows[i : i + batch_size], generator=gen) for i in range(0, len(rows), batch_size)]


def total_updates(
    n_envs: int, nb_steps: int = 0, max_steps: int = -1, min_batches: int = 0, epochs: float = 0
) -> int:
    """U = n * ceil(N / n) for --nb_steps N (or --max_steps); otherwise n * floor(min_env_batches) * epochs."""
    steps = nb_steps if nb_steps and nb_steps > 0 else (max_steps if max_steps and max_steps > 0 else 0)
    if steps > 0:
        return n_envs * math.ceil(steps / n_envs)
    return n_envs * int(min_batches * epochs)
