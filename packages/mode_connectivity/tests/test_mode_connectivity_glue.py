"""RoBERTa GLUE path: local GLUE folders (a raw RTE folder with string labels, synthetic MNLI/SST-2), the bottleneck
adapter, glue-train checkpoints and model/ export, and glue-interpolate's head policy across label spaces."""

import csv
import json
from types import SimpleNamespace

import pytest
import torch
from lmlab.errors import LmlabError
from mode_connectivity.cli import main
from mode_connectivity.glue import add_roberta_adapters, glue_sweep, load_glue_checkpoint, load_glue_split
from mode_connectivity.make_tiny import build_roberta, write_glue

pytestmark = pytest.mark.slow  # the module fixture trains three tiny RoBERTa runs (~20 s on 2 busy cores)


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    model = build_roberta(root / "ckpt_0", seed=0, hidden=32, layers=1, heads=2)
    data = write_glue(root / "glue", n_train=32, n_eval=8, seed=0)
    runs = {}
    for name, task, seed in (("mnli20", "mnli", 20), ("mnli30", "mnli", 30), ("sst2", "sst2", 20)):
        out = root / name
        args = [
            "glue-train", "--task_name", task, "--data_dir", str(data[task]), "--model_name_or_path", str(model),
            "--delta_type", "adapter", "--bottleneck_dim", "4", "--learning_rate", "3e-3", "--max_steps", "4",
            "--eval_steps", "2", "--save_steps", "2", "--per_device_train_batch_size", "8", "--seed", str(seed),
            "--output_dir", str(out), "--progress_bar", "false", "--logger", "none", "--device", "cpu",
        ]  # fmt: skip
        assert main(args) == 0
        runs[name] = out / "model"  # the last weights (checkpoint-2 is the kept one)
    return {"model": str(model), "data": data, "runs": runs, "root": root}


RTE_TRAIN = [
    ("The cat sat on the mat.", "A cat is on a mat.", "entailment"),
    ("Paris is the capital of France.", "Berlin is in France.", "not_entailment"),
    ("It rained all day in Oslo.", "Oslo had rain.", "entailment"),
    ("The shop opens at nine.", "The shop is closed all week.", "not_entailment"),
]


def _raw_rte(folder):
    """An RTE folder as the GLUE distribution ships it: train.tsv and dev.tsv, string labels."""
    folder.mkdir(parents=True)
    for split, rows in (("train", RTE_TRAIN), ("dev", RTE_TRAIN[:2])):
        lines = ["index\tsentence1\tsentence2\tlabel"] + [
            f"{i}\t{a}\t{b}\t{c}" for i, (a, b, c) in enumerate(rows)
        ]
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def test_glue_train_reads_a_raw_rte_folder_and_exports_an_auto_model(glue, tmp_path):
    """A raw RTE folder (dev.tsv, string labels) trains; model/ loads with the Auto class and scores like the run."""
    from transformers import AutoModelForSequenceClassification

    data = _raw_rte(tmp_path / "RTE")
    args = [
        "glue-train", "--task_name", "rte", "--data_dir", str(data), "--model_name_or_path", glue["model"],
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--eval_steps", "100", "--save_steps", "1",
        "--output_dir", str(tmp_path / "run"), "--progress_bar", "false", "--logger", "none", "--device", "cpu",
    ]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "run"
    results = json.loads((out / "results.json").read_text())
    assert set(results["validation"]) == {"accuracy", "loss"} and (out / "DONE").is_file()
    # the kept checkpoint is step 1; the last step is model/ only (not a copy of checkpoints/last.ckpt)
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-2").exists()
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tensors, meta = load_glue_checkpoint(out / "model")
    assert meta["task_name"] == "rte" and model.config.num_labels == 2
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tensors.items())
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(ckpt[f"model.{k}"], v) for k, v in tensors.items())


def test_glue_reader_errors_are_one_line(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nhello,1\n")
    with pytest.raises(LmlabError, match="no column 'sentence'"):
        load_glue_split(tmp_path, "sst2", "train")
    (tmp_path / "train.csv").write_text("sentence\nhello\n")
    with pytest.raises(LmlabError, match="no label column"):
        load_glue_split(tmp_path, "sst2", "train")


def test_bottleneck_adapter_placement_and_identity_init(glue):
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(glue["model"], num_labels=3).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    with torch.no_grad():
        before = model(input_ids=ids).logits.clone()
    n = add_roberta_adapters(model, 4)
    assert n == 2 * model.config.num_hidden_layers
    names = [k for k in model.state_dict() if "adapter_" in k]
    assert any("attention.output.dense.adapter" in k for k in names) and any(
        ".output.dense.adapter" in k and "attention" not in k for k in names
    )
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)  # up-projection starts at zero


def test_glue_train_checkpoints(glue):
    tensors, meta = load_glue_checkpoint(glue["runs"]["mnli20"])
    assert meta["task_name"] == "mnli" and meta["num_labels"] == 3 and meta["delta_type"] == "adapter"
    assert tensors["classifier.out_proj.weight"].shape[0] == 3
    assert (glue["runs"]["mnli20"].parent / "checkpoint-2").is_dir()
    assert not (glue["runs"]["mnli20"].parent / "checkpoint-4").exists()  # the last weights are model/
    results = json.loads((glue["runs"]["mnli20"].parent / "results.json").read_text())
    assert {"validation_matched", "validation_mismatched"} <= set(results)
    # the frozen backbone (not adapters, layer norms or classifier) is unchanged by adapter training
    base = load_glue_checkpoint(glue["runs"]["sst2"])[0]
    frozen = [
        k for k in tensors if "adapter_" not in k and "LayerNorm" not in k and not k.startswith("classifier.")
    ]
    assert frozen and all(torch.equal(tensors[k], base[k]) for k in frozen)


def _cfg(glue, p1, p2, eval_task, policy="auto"):
    return SimpleNamespace(
        path1=str(p1), path2=str(p2), eval_task=eval_task, task_name=eval_task, head_policy=policy,
        model_name_or_path=glue["model"], device="cpu",
    )  # fmt: skip


@pytest.mark.parametrize("eval_task", ["mnli", "sst2"])
def test_task_boundary_keeps_eval_task_head(glue, eval_task):
    p_mnli, p_sst = glue["runs"]["mnli20"], glue["runs"]["sst2"]
    model, sweep, task, policy, _ = glue_sweep(_cfg(glue, p_mnli, p_sst, eval_task))
    assert policy == ("from_1" if eval_task == "mnli" else "from_2")
    t1, t2 = load_glue_checkpoint(p_mnli)[0], load_glue_checkpoint(p_sst)[0]
    head = t1 if eval_task == "mnli" else t2
    for a in (0.0, 0.5, 1.0):
        sweep.set(a)
        state = model.state_dict()
        for k in ("classifier.out_proj.weight", "classifier.out_proj.bias"):
            assert torch.equal(state[k], head[k])
        dense = state["classifier.dense.weight"]
        if a == 0.5:
            torch.testing.assert_close(
                dense, (t1["classifier.dense.weight"] + t2["classifier.dense.weight"]) / 2
            )
        else:
            assert torch.equal(dense, (t1 if a == 0.0 else t2)["classifier.dense.weight"])
    with pytest.raises(LmlabError, match="different label spaces"):
        glue_sweep(_cfg(glue, p_mnli, p_sst, eval_task, policy="interpolate"))


def test_glue_interpolate_cli_same_task(glue, tmp_path):
    args = [
        "glue-interpolate", "--task_name", "mnli", "--data_dir", str(glue["data"]["mnli"]), "--model_name_or_path",
        glue["model"], "--path1", str(glue["runs"]["mnli20"]), "--path2", str(glue["runs"]["mnli30"]),
        "--itpl_points", "3", "--output_dir", str(tmp_path / "gi"), "--device", "cpu",
    ]  # fmt: skip
    assert main(args) == 0
    with open(tmp_path / "gi" / "result.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == [
        "prefix",
        "metric",
        "x",
        "dev_performance",
        "dev_loss",
        "test_performance",
        "test_loss",
    ]
    assert [r[2] for r in rows[1:4]] == ["0.0", "0.5", "1.0"] and rows[4][0] == "average"
    summary = json.loads((tmp_path / "gi" / "results.json").read_text())
    assert summary["head_policy"] == "interpolate" and "perf_barrier" in summary["validation_matched"]
    assert (tmp_path / "gi" / "path.png").is_file()
    assert main(args) == 1  # a finished sweep is refused without --overwrite (one meaning in every command)


def test_a_new_head_is_one_line_not_a_load_report(tmp_path):
    """A RoBERTa pre-training checkpoint (masked LM) gets a new classifier: said in one line, no LOAD REPORT."""
    import logging

    from lmlab.testing import save_tiny_model
    from mode_connectivity.glue import build_glue_model

    class Record(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    mlm = save_tiny_model(tmp_path / "mlm", "roberta")
    loggers = [logging.getLogger(n) for n in ("transformers.modeling_utils", "mode-connectivity")]
    record = Record()
    for logger in loggers:
        logger.addHandler(record)
    try:
        build_glue_model(str(mlm), 3, "none", 4, device="cpu")
    finally:
        for logger in loggers:
            logger.removeHandler(record)
    assert not any("LOAD REPORT" in m for m in record.messages)
    assert record.messages[-1].endswith(
        "new (random) classifier.dense, classifier.out_proj for 3 label(s); unused checkpoint weights: lm_head"
    )
