"""The one GLUE reader: raw GLUE folders as distributed (`CoLA/train.tsv`, `MNLI/dev_matched.tsv`, the original
column names, string labels such as `entailment`), files or `save_to_disk` folders with the Hugging Face column
names, for all nine tasks. Every split comes back in the Hugging Face convention: `texts_a`, `texts_b`, labels as
class indices in the order of the `glue` data set on the hub (floats for STS-B), `None` for unlabelled test rows.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from lmlab.data import read_table
from lmlab.errors import LmlabError


@dataclasses.dataclass(frozen=True)
class GlueTask:
    columns: tuple[str, str | None]  # Hugging Face text columns
    num_labels: int  # 1 = regression
    folder: str  # the folder name in the GLUE distribution
    label_names: tuple[str, ...] = ()  # string labels in Hugging Face's index order
    raw_columns: tuple[tuple[str, str], ...] = ()  # the distribution's column -> Hugging Face column


TASKS = {
    "cola": GlueTask(("sentence", None), 2, "CoLA"),
    "sst2": GlueTask(("sentence", None), 2, "SST-2"),
    "mrpc": GlueTask(
        ("sentence1", "sentence2"),
        2,
        "MRPC",
        raw_columns=(("#1 String", "sentence1"), ("#2 String", "sentence2"), ("Quality", "label")),
    ),
    "qqp": GlueTask(("question1", "question2"), 2, "QQP", raw_columns=(("is_duplicate", "label"),)),
    "stsb": GlueTask(("sentence1", "sentence2"), 1, "STS-B", raw_columns=(("score", "label"),)),
    "mnli": GlueTask(
        ("premise", "hypothesis"),
        3,
        "MNLI",
        ("entailment", "neutral", "contradiction"),
        (("sentence1", "premise"), ("sentence2", "hypothesis"), ("gold_label", "label")),
    ),
    "qnli": GlueTask(("question", "sentence"), 2, "QNLI", ("entailment", "not_entailment")),
    "rte": GlueTask(("sentence1", "sentence2"), 2, "RTE", ("entailment", "not_entailment")),
    "wnli": GlueTask(("sentence1", "sentence2"), 2, "WNLI"),
}
COLA_RAW_COLUMNS = [
    "source",
    "label",
    "original_label",
    "sentence",
]  # the distribution's CoLA files have no header
# split -> file stems to look for, Hugging Face's name first, then the distribution's
SPLIT_FILES = {
    "train": ("train",),
    "validation": ("validation", "dev"),
    "validation_matched": ("validation_matched", "dev_matched"),
    "validation_mismatched": ("validation_mismatched", "dev_mismatched"),
    "test": ("test",),
    "test_matched": ("test_matched", "test"),
    "test_mismatched": ("test_mismatched",),
}
SPLIT_ALIASES = {
    "dev": "validation",
    "dev_matched": "validation_matched",
    "dev_mismatched": "validation_mismatched",
}
FILE_SUFFIXES = (".tsv", ".csv", ".jsonl", ".json")


@dataclasses.dataclass
class GlueSplit:
    task: str
    split: str
    source: str
    texts_a: list[str]
    texts_b: list[str] | None
    labels: list[int] | list[float] | None  # None: an unlabelled (test) split

    def __len__(self) -> int:
        return len(self.texts_a)

    @property
    def num_labels(self) -> int:
        return TASKS[self.task].num_labels


def normalise_task(name: str) -> str:
    """`SST-2`, `sst_2`, `STS-B`, `MNLI` -> the Hugging Face config name (`sst2`, `stsb`, `mnli`)."""
    task = name.lower().replace("-", "").replace("_", "")
    if task not in TASKS:
        raise LmlabError(f"unknown GLUE task {name!r}; choose from {', '.join(TASKS)}")
    return task


def eval_splits(task: str) -> list[str]:
    """The dev splits a task is scored on (MNLI: matched and mismatched)."""
    task = normalise_task(task)
    return ["validation_matched", "validation_mismatched"] if task == "mnli" else ["validation"]


def _split_file(folder: Path, split: str) -> Path | None:
    for stem in SPLIT_FILES.get(split, (split,)):
        for suffix in FILE_SUFFIXES:
            if (folder / f"{stem}{suffix}").is_file():
                return folder / f"{stem}{suffix}"
    return None


def _task_folder(root: Path, task: str, split: str) -> Path:
    if _split_file(root, split) is not None:
        return root
    folder = TASKS[task].folder
    for name in dict.fromkeys((folder, folder.lower(), folder.replace("-", ""), task, task.upper())):
        if (root / name).is_dir():
            return root / name
    wanted = "/".join(SPLIT_FILES.get(split, (split,)))
    raise LmlabError(
        f"{root} has no {split} split of {task}: expected {wanted}.tsv/.csv/.jsonl there or in {root / folder}/"
    )


def _read_records(path: Path, task: str) -> list[dict[str, str]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        try:
            text = path.read_text(encoding="utf-8")
            if suffix == ".json":
                records = json.loads(text)
            else:
                records = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise LmlabError(f"cannot parse {path}: {err}") from err
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise LmlabError(f"{path} must hold one JSON object per row")
        return records
    if task == "cola" and suffix == ".tsv":
        first = read_table(path, header=False)
        if first.shape[1] == len(COLA_RAW_COLUMNS) and str(first.iloc[0, 1]).lstrip("-").isdigit():
            first.columns = COLA_RAW_COLUMNS  # the distribution's headerless file
            return first.to_dict("records")
    return read_table(path).to_dict("records")


def _labels(values: list, task: str, where: str) -> list[int] | list[float] | None:
    spec = TASKS[task]
    if all(v is None or str(v).strip() in ("", "-1") for v in values):
        return None  # a test split: no labels (Hugging Face writes -1)
    out: list = []
    for i, value in enumerate(values):
        text = str(value).strip()
        try:
            if spec.num_labels == 1:
                out.append(float(text))
            elif text.lstrip("-").isdigit():
                label = int(text)
                if not 0 <= label < spec.num_labels:
                    raise ValueError
                out.append(label)
            else:
                out.append(spec.label_names.index(text))
        except ValueError:
            allowed = ", ".join(spec.label_names) or f"0..{spec.num_labels - 1}"
            raise LmlabError(
                f"{where}, row {i + 1}: label {value!r} is not one of {task}'s ({allowed})"
            ) from None
    return out


def read_glue(
    source: str | os.PathLike, task: str, split: str = "train", max_rows: int | None = None
) -> GlueSplit:
    """Read one split of a GLUE task.

    `source` is a split file (`.tsv`, `.csv`, `.jsonl`, `.json`), a task folder (`RTE/` with `train.tsv`,
    `dev.tsv`; or `train.csv`, `validation.jsonl`, ...), the folder holding the task folders (`glue_data/`), or a
    `save_to_disk` folder. `split` is a Hugging Face split name; `dev`, `dev_matched`, `dev_mismatched` are
    accepted for the distribution's names.
    """
    task = normalise_task(task)
    split = SPLIT_ALIASES.get(split, split)
    spec = TASKS[task]
    path = Path(source)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        import datasets

        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise LmlabError(f"{path} has no {split} split; its splits are {list(loaded)}")
            loaded = loaded[split]
        records, where = loaded.to_list(), f"{path} [{split}]"
    elif path.is_dir():
        file = _split_file(_task_folder(path, task, split), split)
        records, where = _read_records(file, task), str(file)
    elif path.is_file():
        records, where = _read_records(path, task), str(path)
    else:
        raise LmlabError(f"GLUE source {source} does not exist; give a file or a folder")
    if not records:
        raise LmlabError(f"{where} holds no rows")
    renames = dict(
        spec.raw_columns
    )  # a distribution name is renamed unless the Hugging Face one is there too
    records = [
        {(renames[k] if renames.get(k) not in (None, *r) else k): v for k, v in r.items()} for r in records
    ]
    col_a, col_b = spec.columns
    needed = [c for c in (col_a, col_b) if c]
    missing = [c for c in needed if c not in records[0]]
    if missing:
        raise LmlabError(
            f"{where} has no column {missing[0]!r} for {task}; its columns are {list(records[0])}"
        )
    if max_rows:
        records = records[:max_rows]
    for i, record in enumerate(records):
        empty = [c for c in needed if record[c] is None or not str(record[c]).strip()]
        if empty:
            raise LmlabError(f"{where}, row {i + 1}: column {empty[0]!r} is empty; fill or remove that row")
    labels = _labels([r.get("label") for r in records], task, where) if "label" in records[0] else None
    return GlueSplit(
        task=task,
        split=split,
        source=where,
        texts_a=[str(r[col_a]) for r in records],
        texts_b=[str(r[col_b]) for r in records] if col_b else None,
        labels=labels,
    )
