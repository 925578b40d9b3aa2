"""lmlab.data: every input format, the grouping arithmetic, environments, splits, and the error messages."""

import json

import pytest
from lmlab.data import load_corpus, load_environments, sample_path, tokenize_and_group, train_valid_split
from lmlab.errors import LmlabError
from lmlab.testing import tiny_tokenizer, write_environments, write_jsonl_corpus, write_text_corpus


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer("gpt2")


def test_text_lines_and_paragraphs(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first line\n\nsecond\r\nthird\n")
    assert list(load_corpus(path)["text"]) == ["first line", "second", "third"]
    path.write_text("a b\nc\n\n\nd\ne\n")
    assert list(load_corpus(path, documents="paragraph")["text"]) == ["a b c", "d e"]
    with pytest.raises(LmlabError, match="documents must be"):
        load_corpus(path, documents="page")


def test_jsonl_csv_tsv_and_folder(tmp_path):
    write_jsonl_corpus(tmp_path / "j", n=5, column="body")
    assert len(load_corpus(tmp_path / "j" / "corpus.jsonl", text_column="body")) == 5
    (tmp_path / "t.csv").write_text('text,label\n"quoted, text",1\nplain,0\n')
    ds = load_corpus(tmp_path / "t.csv", required_columns=("text", "label"))
    assert list(ds["label"]) == ["1", "0"] and len(ds) == 2
    mrpc = load_corpus(sample_path("glue/mrpc/train.tsv"), required_columns=("Quality", "#1 String"))
    assert len(mrpc) == 6 and all('"' not in q for q in mrpc["Quality"])
    folder = tmp_path / "f"
    write_text_corpus(folder, "a.txt", n=3)
    write_text_corpus(folder, "b.txt", n=4)
    (folder / "notes.md").write_text("ignored: not a data file")
    assert len(load_corpus(folder)) == 7


def test_save_to_disk_folder_and_split(tmp_path):
    from datasets import Dataset, DatasetDict

    Dataset.from_dict({"text": ["a", "b"]}).save_to_disk(tmp_path / "ds")
    assert list(load_corpus(tmp_path / "ds")["text"]) == ["a", "b"]
    DatasetDict(
        {"train": Dataset.from_dict({"text": ["x"]}), "validation": Dataset.from_dict({"text": ["y"]})}
    ).save_to_disk(tmp_path / "dd")
    assert list(load_corpus(tmp_path / "dd", split="validation")["text"]) == ["y"]
    with pytest.raises(LmlabError, match="no split 'test'"):
        load_corpus(tmp_path / "dd", split="test")


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p: None, "no such file or folder"),
        (lambda p: p.write_text(""), "is empty"),
        (lambda p: p.write_text("\n\n  \n"), "no non-empty line"),
        (lambda p: p.write_bytes(b"\xff\xfe\x00bad"), "cannot read"),
    ],
)
def test_bad_text_inputs_name_the_file(tmp_path, setup, match):
    path = tmp_path / "data.txt"
    setup(path)
    with pytest.raises(LmlabError, match=match) as err:
        load_corpus(path)
    assert "data.txt" in str(err.value)


def test_missing_column_and_other_bad_inputs(tmp_path):
    (tmp_path / "d.jsonl").write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(LmlabError, match=r"d.jsonl has no column 'text'; its columns are \['body'\]"):
        load_corpus(tmp_path / "d.jsonl")
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(LmlabError, match="cannot parse"):
        load_corpus(tmp_path / "bad.jsonl")
    (tmp_path / "x.parquet2").write_text("x")
    with pytest.raises(LmlabError, match="unsupported file type"):
        load_corpus(tmp_path / "x.parquet2")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(LmlabError, match="holds no data file"):
        load_corpus(tmp_path / "empty_dir")
    (tmp_path / "h.csv").write_text("text\n")
    with pytest.raises(LmlabError, match="holds no rows"):
        load_corpus(tmp_path / "h.csv")
    with pytest.raises(LmlabError, match="no shipped sample"):
        sample_path("nope/none.txt")


def test_environments_keep_names_and_refuse_empty(tmp_path):
    envs = load_environments(write_environments(tmp_path / "envs", names=("news", "wiki"), n=3))
    assert list(envs) == ["news", "wiki"] and all(len(d) == 3 for d in envs.values())
    (tmp_path / "envs" / "zempty.txt").write_text("")
    with pytest.raises(LmlabError, match="zempty.txt is empty"):
        load_environments(tmp_path / "envs")
    with pytest.raises(LmlabError, match="not a folder"):
        load_environments(tmp_path / "nope")
    (tmp_path / "none").mkdir()
    with pytest.raises(LmlabError, match="no environment file"):
        load_environments(tmp_path / "none")
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / "a.txt").write_text("x\n")
    (tmp_path / "dup" / "a.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(LmlabError, match="two files give environment 'a'"):
        load_environments(tmp_path / "dup")


def test_grouping_packs_exact_blocks(tok):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": ["one two three four five", "six seven eight", "nine ten"]})
    flat = [t for text in ds["text"] for t in tok(text)["input_ids"]]
    grouped = tokenize_and_group(ds, tok, block_size=4)
    blocks = list(grouped["input_ids"])
    assert all(len(b) == 4 for b in blocks)
    assert [t for b in blocks for t in b] == flat[: len(blocks) * 4]
    assert len(blocks) == len(flat) // 4
    lines = list(tokenize_and_group(ds, tok, block_size=3, line_by_line=True)["input_ids"])
    assert len(lines) == 3 and lines[2] == tok("nine ten")["input_ids"][:3]


def test_grouping_errors(tok):
    from datasets import Dataset

    ds = Dataset.from_dict({"text": ["short"]})
    with pytest.raises(LmlabError, match="fewer than block_size"):
        tokenize_and_group(ds, tok, block_size=64)
    with pytest.raises(LmlabError, match="longer than the tokenizer"):
        tokenize_and_group(ds, tok, block_size=10_000)
    with pytest.raises(LmlabError, match="at least 2"):
        tokenize_and_group(ds, tok, block_size=1)
    with pytest.raises(LmlabError, match="no column 'body'"):
        tokenize_and_group(ds, tok, block_size=4, text_column="body")


def test_split_is_deterministic_and_disjoint():
    from datasets import Dataset

    ds = Dataset.from_dict({"i": list(range(50))})
    train, valid = train_valid_split(ds, 0.2, seed=1)
    again_train, _ = train_valid_split(ds, 0.2, seed=1)
    assert len(valid) == 10 and len(train) == 40
    assert list(train["i"]) == list(again_train["i"])
    assert sorted(list(train["i"]) + list(valid["i"])) == list(range(50))
    assert list(train_valid_split(ds, 0.2, seed=2)[0]["i"]) != list(train["i"])
    with pytest.raises(LmlabError, match="valid_fraction"):
        train_valid_split(ds, 1.0)
    with pytest.raises(LmlabError, match="cannot split"):
        train_valid_split(Dataset.from_dict({"i": [1]}), 0.5)


# ------------------------------------------------------------------ strict tables (lmlab.data.read_table)


def test_read_table_refuses_a_row_with_an_extra_field(tmp_path):
    from lmlab.data import read_table

    path = tmp_path / "t.csv"
    path.write_text("text,label\nhello,1,extra\nworld,0\n")
    with pytest.raises(LmlabError, match=r"t\.csv, line 2: 3 fields where the header has 2"):
        read_table(path)
    path.write_text("text,label\nhello,1\nworld\n")
    with pytest.raises(LmlabError, match=r"line 3: 1 fields where the header has 2"):
        read_table(path)


def test_read_table_keeps_strings_and_checks_empty_cells(tmp_path):
    from lmlab.data import read_table

    path = tmp_path / "t.tsv"
    path.write_text('question\tanswer\nwho "is" it\tnan\nwhat\tNA\nwhere\t\n')
    frame = read_table(path)
    assert frame["answer"].tolist() == ["nan", "NA", ""] and frame["question"][0] == 'who "is" it'
    with pytest.raises(LmlabError, match=r"line 4: column 'answer' is empty \(1 such row"):
        read_table(path, non_empty=("answer",))
    with pytest.raises(LmlabError, match="no column 'context'"):
        read_table(path, required_columns=("context",))
    (tmp_path / "bin.csv").write_bytes(b"a,b\n\xff\xfe,1\n")
    with pytest.raises(LmlabError, match="not UTF-8"):
        read_table(tmp_path / "bin.csv")


def test_load_corpus_reads_tables_strictly(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text('text\n"a, quoted"\nb\n')
    assert load_corpus(path)["text"] == ["a, quoted", "b"]
    path.write_text("text\na,b\n")
    with pytest.raises(LmlabError, match="line 2"):
        load_corpus(path)


def test_the_shipped_brown_corpus_loads_whole():
    brown = load_corpus(sample_path("brown/brown.jsonl.gz"))
    assert len(brown) == 15667 and set(brown.column_names) == {"doc", "genre", "para", "text"}
    assert len(set(brown["genre"])) == 15
    assert sum(len(t.split()) for t in brown["text"]) > 1_000_000
