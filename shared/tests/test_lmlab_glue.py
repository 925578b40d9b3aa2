"""lmlab.glue: raw GLUE folders (original headers, string labels, headerless CoLA, MNLI's two dev files), Hugging
Face column names in CSV/JSONL/save_to_disk, and one-line errors."""

import json

import pytest
from lmlab.errors import LmlabError
from lmlab.glue import eval_splits, normalise_task, read_glue


def _tsv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ([("\t".join(header))] if header else []) + ["\t".join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def glue_data(tmp_path):
    root = tmp_path / "glue_data"
    _tsv(
        root / "RTE/train.tsv",
        ["index", "sentence1", "sentence2", "label"],
        [
            ["0", "A cat sat.", "An animal sat.", "entailment"],
            ["1", "It rains.", "It is dry.", "not_entailment"],
        ],
    )
    _tsv(
        root / "RTE/dev.tsv",
        ["index", "sentence1", "sentence2", "label"],
        [["0", "x", "y", "not_entailment"]],
    )
    _tsv(
        root / "CoLA/train.tsv",
        None,
        [["gj04", "1", "", "Our friends won't buy this."], ["gj04", "0", "*", "Buy won't."]],
    )
    _tsv(
        root / "MNLI/dev_matched.tsv",
        ["index", "genre", "sentence1", "sentence2", "label1", "gold_label"],
        [
            ["0", "fiction", "p1", "h1", "neutral", "neutral"],
            ["1", "fiction", "p2", "h2", "contradiction", "contradiction"],
        ],
    )
    _tsv(
        root / "MNLI/dev_mismatched.tsv",
        ["index", "genre", "sentence1", "sentence2", "label1", "gold_label"],
        [["0", "letters", "p3", "h3", "entailment", "entailment"]],
    )
    _tsv(
        root / "MRPC/dev.tsv",
        ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
        [["1", "7", "8", "s one", "s two"]],
    )
    _tsv(
        root / "STS-B/dev.tsv",
        ["index", "genre", "sentence1", "sentence2", "score"],
        [["0", "news", "a", "b", "3.8"]],
    )
    _tsv(root / "SST-2/test.tsv", ["index", "sentence"], [["0", "fine film"]])
    return root  # fmt: skip


def test_raw_glue_folders_with_original_headers_and_string_labels(glue_data):
    rte = read_glue(glue_data, "RTE", "train")
    assert rte.texts_a == ["A cat sat.", "It rains."] and rte.texts_b == ["An animal sat.", "It is dry."]
    assert rte.labels == [0, 1] and rte.num_labels == 2
    assert read_glue(glue_data / "RTE", "rte", "dev").labels == [
        1
    ]  # a task folder and the distribution's split name
    cola = read_glue(glue_data, "cola", "train")
    assert (
        cola.texts_a == ["Our friends won't buy this.", "Buy won't."]
        and cola.labels == [1, 0]
        and cola.texts_b is None
    )
    assert eval_splits("MNLI") == ["validation_matched", "validation_mismatched"]
    matched = read_glue(glue_data, "mnli", "validation_matched")
    assert matched.texts_a == ["p1", "p2"] and matched.texts_b == ["h1", "h2"] and matched.labels == [1, 2]
    assert read_glue(glue_data, "mnli", "validation_mismatched").labels == [0]
    mrpc = read_glue(glue_data, "mrpc", "validation")
    assert (mrpc.texts_a, mrpc.texts_b, mrpc.labels) == (["s one"], ["s two"], [1])
    assert read_glue(glue_data, "STS-B", "validation").labels == [3.8]
    test = read_glue(glue_data, "sst2", "test")
    assert test.labels is None and test.texts_a == ["fine film"]


def test_hugging_face_columns_in_csv_jsonl_and_save_to_disk(tmp_path):
    import datasets

    (tmp_path / "train.csv").write_text('premise,hypothesis,label\n"a, b",c,2\nd,e,0\n')
    assert read_glue(tmp_path, "mnli", "train").texts_a == ["a, b", "d"]
    rows = [
        {"sentence1": "s", "sentence2": "t", "label": 0},
        {"sentence1": "u", "sentence2": "v", "label": 1},
    ]
    (tmp_path / "validation.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    wnli = read_glue(tmp_path / "validation.jsonl", "wnli")
    assert wnli.texts_b == ["t", "v"] and wnli.labels == [0, 1]
    (tmp_path / "test.jsonl").write_text("\n".join(json.dumps({**r, "label": -1}) for r in rows))
    assert read_glue(tmp_path / "test.jsonl", "wnli").labels is None  # Hugging Face's unlabelled test split
    folder = tmp_path / "hf"
    datasets.DatasetDict(
        {"validation": datasets.Dataset.from_dict({"sentence": ["x", "y"], "label": [1, 0], "idx": [0, 1]})}
    ).save_to_disk(str(folder))
    split = read_glue(folder, "sst-2", "dev", max_rows=1)
    assert split.labels == [1] and len(split) == 1


def test_errors_name_the_problem(glue_data, tmp_path):
    with pytest.raises(LmlabError, match="unknown GLUE task 'boolq'"):
        normalise_task("boolq")
    with pytest.raises(LmlabError, match="no validation split of qqp"):
        read_glue(glue_data, "qqp", "validation")
    _tsv(tmp_path / "bad/train.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "a", "b", "maybe"]])
    with pytest.raises(
        LmlabError, match=r"row 1: label 'maybe' is not one of rte's \(entailment, not_entailment\)"
    ):
        read_glue(tmp_path / "bad", "rte")
    _tsv(tmp_path / "ragged/train.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "a", "b"]])
    with pytest.raises(LmlabError, match="line 2: 3 fields where the header has 4"):
        read_glue(tmp_path / "ragged", "rte")
    _tsv(
        tmp_path / "blank/train.tsv",
        ["index", "sentence1", "sentence2", "label"],
        [["0", "a", " ", "entailment"]],
    )
    with pytest.raises(LmlabError, match=r"row 1: column 'sentence2' is empty"):
        read_glue(tmp_path / "blank", "rte")
    with pytest.raises(LmlabError, match="no column 'question'"):
        read_glue(glue_data / "RTE/train.tsv", "qnli")
