"""RoBERTa GLUE path: local GLUE folders (real MRPC sample + synthetic MNLI/SST-2), the bottleneck adapter,
glue-train checkpoints, and glue-interpolate's head policy across label spaces."""

import csv
import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from lmlab.data import sample_path
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
        runs[name] = out / "checkpoint-4"
    return {"model": str(model), "data": data, "runs": runs, "root": root}


@pytest.mark.parametrize("task,folder", [("mrpc", "glue/mrpc"), ("stsb", "glue/sts-b")])
def test_real_glue_samples_load_with_raw_headers(tmp_path, task, folder):
    src = sample_path(folder)
    lines = (src / "dev.tsv").read_text(encoding="utf-8").splitlines()
    shutil.copy(src / "dev.tsv", tmp_path / "validation.tsv")
    ds = load_glue_split(tmp_path, task, "validation")
    assert len(ds) == len([line for line in lines[1:] if line.strip()])
    fields = lines[1].split("\t")
    assert ds[0]["sentence1"] == fields[3 if task == "mrpc" else 7]
    if task == "mrpc":
        assert set(ds["label"]) <= {0, 1} and ds[0]["label"] == int(lines[1].split("\t")[0])
    else:
        assert all(0.0 <= float(x) <= 5.0 for x in ds["label"])


def test_missing_columns_and_splits_are_errors(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nhello,1\n")
    with pytest.raises(LmlabError, match="missing column"):
        load_glue_split(tmp_path, "sst2", "train")
    with pytest.raises(LmlabError, match="no validation split"):
        load_glue_split(tmp_path, "sst2", "validation")


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
    summary = json.loads((tmp_path / "gi" / "summary.json").read_text())
    assert summary["head_policy"] == "interpolate" and "perf_barrier" in summary["validation_matched"]
    assert (tmp_path / "gi" / "path.png").is_file()
