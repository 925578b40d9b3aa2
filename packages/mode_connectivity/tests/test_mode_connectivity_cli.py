"""End-to-end CLI runs on a tiny T5 and a tiny synthetic task: training (freezing, checkpoints, determinism,
SGD noise, cartography, resume), interpolation (exact ends = evaluate, flat path for identical ends, outputs),
curve, dist, cartography-process, and the one-line errors."""

import csv
import json
from pathlib import Path

import pytest
import torch
from mode_connectivity.cli import main
from mode_connectivity.config import EvaluateConfig
from mode_connectivity.make_tiny import build_t5, build_tokenizer, synthetic_tasks
from mode_connectivity.models import DELTA_MARKERS, build_for_method, delta_state, load_t5
from safetensors.torch import load_file


def _csv(path):
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


TOL_ARGS = ["--max_input_length", "48", "--max_output_length", "8", "--predict_batch_size", "16"]
# the delta sizes of every method (each command reads only its --tune_method's)
DELTA_ARGS = ["--adapter_size", "4", "--lora_r", "2", "--num_virtual_tokens", "3"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    tok = build_tokenizer(root / "model")
    build_t5(root / "model", tok, d_model=32, num_layers=1, num_heads=2, d_ff=32, seed=0)
    tasks = synthetic_tasks(root / "data", n_train=24, n_eval=6, seed=0)
    return {
        "root": root,
        "model": str(root / "model"),
        "task": str(tasks["tiny-nli"]),
        "task2": str(tasks["tiny-nli2"]),
    }


def _train(tiny, out, *extra, method="adapter", steps=4, seed=20):
    args = [
        "train", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", method, *DELTA_ARGS,
        "--learning_rate_list", "1e-2", "--bsz_list", "8", "--train_iters", str(steps), "--valid_interval", "2",
        "--output_interval", "2", "--eval_mode", "rank", "--output_dir", str(Path(out) / f"seed_{seed}"), "--progress_bar", "false",
        "--logger", "none", "--seed", str(seed), "--device", "cpu", *TOL_ARGS, *extra,
    ]  # fmt: skip
    assert main(args) == 0
    return Path(out) / f"seed_{seed}"


@pytest.fixture(scope="module")
def runs(tiny, tmp_path_factory):
    """runs(method): its two 4-update jobs (seeds 20 and 30), trained once per module on first use."""
    done = {}

    def get(method):
        if method not in done:
            out = tmp_path_factory.mktemp(f"{method}_runs")
            done[method] = {s: _train(tiny, out, method=method, seed=s) for s in (20, 30)}
        return done[method]

    return get


@pytest.fixture(scope="module")
def adapter_runs(runs):
    return runs("adapter")


def test_adapter_training_freezes_backbone_and_saves_only_adapters(tiny, adapter_runs):
    job = adapter_runs[20]
    for name in ("checkpoint@2", "checkpoint@4", "checkpoint-best", "model"):
        assert (job / name / "weights.safetensors").is_file(), name
    tensors = load_file(str(job / "model" / "weights.safetensors"))
    assert tensors and all("adapter_" in k for k in tensors)
    assert len(tensors) == 2 * (2 * 1 + 3 * 1)  # (W_A, W_B) x (2 L_enc + 3 L_dec)
    meta = json.loads((job / "model" / "meta.json").read_text())
    assert meta["kind"] == "adapter" and meta["step"] == 4 and meta["args"]["seed"] == 20
    # the full Lightning checkpoint holds the backbone after training: bit-identical to the PLM
    plm = load_t5(tiny["model"]).state_dict()
    ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    backbone = {k.removeprefix("model."): v for k, v in ckpt.items() if "adapter_" not in k}
    assert set(plm) <= set(backbone)
    assert all(torch.equal(plm[k], backbone[k]) for k in plm)
    # the adapters did move
    assert not torch.equal(
        tensors[next(iter(tensors))],
        load_file(str(job / "checkpoint@2" / "weights.safetensors"))[next(iter(tensors))],
    )
    results = json.loads((job / "results.json").read_text())
    assert (results["task"], results["metric"], results["lr"], results["bsz"]) == ("tiny-nli", "ACC", 0.01, 8)
    assert (job / "DONE").is_file() and (job / "report.md").is_file()
    # model/ loads with the Auto class as the frozen backbone (the adapters are weights.safetensors beside it)
    from transformers import AutoModelForSeq2SeqLM

    exported = AutoModelForSeq2SeqLM.from_pretrained(job / "model").state_dict()
    assert all(torch.equal(exported[k], plm[k]) for k in plm)
    # checkpoint-best saved at a step that checkpoint@N holds already is a link to it, not a second copy
    assert (job / "checkpoint-best" / "weights.safetensors").is_symlink()


def test_same_seed_identical_different_seed_differs_and_sgd_noise_shares_init(tiny, adapter_runs, tmp_path):
    again = _train(tiny, tmp_path / "again", seed=20)
    a = load_file(str(again / "checkpoint@4" / "weights.safetensors"))
    b = load_file(str(adapter_runs[20] / "checkpoint@4" / "weights.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # different seeds -> different adapter init (save_init writes the initial state)
    init = {}
    for s in (20, 30):
        _train(tiny, tmp_path / f"init{s}", "--save_init", str(tmp_path / f"init_{s}"), steps=1, seed=s)
        init[s] = load_file(str(tmp_path / f"init_{s}" / "weights.safetensors"))
    assert not torch.equal(init[20][next(iter(init[20]))], init[30][next(iter(init[30]))])
    # --SGD_noise: runs with seeds 30 and 40 load seed 20's initial state -> identical init, different data order
    for s in (30, 40):
        _train(
            tiny, tmp_path / f"noise{s}", "--SGD_noise", "--init_path", str(tmp_path / "init_20"),
            "--save_init", str(tmp_path / f"noise_init_{s}"), steps=1, seed=s,
        )  # fmt: skip
        loaded = load_file(str(tmp_path / f"noise_init_{s}" / "weights.safetensors"))
        assert all(torch.equal(loaded[k], init[20][k]) for k in loaded)


def _interpolate(tiny, out, p1, p2, *extra, method="adapter", eval_mode="rank"):
    args = [
        "interpolate", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", method, *DELTA_ARGS,
        "--load_PET_path_1", str(p1), "--load_PET_path_2", str(p2), "--eval_mode", eval_mode,
        "--output_dir", str(out), "--device", "cpu", *TOL_ARGS, *extra,
    ]  # fmt: skip
    return main(args)


def _evaluate(tiny, out, path, method="adapter", eval_mode="rank"):
    args = [
        "evaluate", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", method, *DELTA_ARGS,
        "--load_PET_path", str(path), "--eval_mode", eval_mode, "--output_dir", str(out), "--device", "cpu", *TOL_ARGS,
    ]  # fmt: skip
    assert main(args) == 0
    return json.loads((Path(out) / "results.json").read_text())


def test_interpolate_ends_equal_evaluate_and_outputs(tiny, adapter_runs, tmp_path):
    p1, p2 = adapter_runs[20] / "checkpoint@4", adapter_runs[30] / "checkpoint@4"
    assert _interpolate(tiny, tmp_path / "itp", p1, p2, "--itpl_points", "6") == 0
    done = (tmp_path / "itp" / "results.json").read_text()
    assert (
        _interpolate(tiny, tmp_path / "itp", p1, p2, "--itpl_points", "6") == 1
    )  # finished: needs --overwrite
    assert _interpolate(tiny, tmp_path / "itp", p1, p2, "--itpl_points", "6", "--overwrite", "true") == 0
    assert (tmp_path / "itp" / "results.json").read_text() == done  # recomputed, the same sweep
    rows = _csv(tmp_path / "itp" / "result.csv")
    assert rows[0] == [
        "prefix",
        "metric",
        "x",
        "dev_performance",
        "dev_loss",
        "test_performance",
        "test_loss",
    ]
    assert [r[2] for r in rows[1:7]] == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"] and rows[7][0] == "average"
    summary = json.loads((tmp_path / "itp" / "results.json").read_text())
    for idx, path in ((0, p1), (-1, p2)):
        ev = _evaluate(tiny, tmp_path / f"ev{idx}", path)
        assert summary["dev"]["metric"][idx] == ev["dev_performance"]  # exactly, not approximately
        assert summary["dev"]["loss"][idx] == ev["dev_loss"]
        assert summary["test"]["loss"][idx] == ev["test_loss"]
    assert {"perf_barrier", "loss_barrier", "min_drop", "connected"} <= set(summary["dev"])
    analysis = json.loads((tmp_path / "itp" / "valid_data_analysis.json").read_text())
    assert list(analysis) == ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
    assert analysis["0.0"]["down_list"] == [] and set(analysis["0.0"]) == {
        "zero_list",
        "one_list",
        "up_list",
        "down_list",
    }
    n_dev = 6
    for v in analysis.values():
        assert sorted(v["zero_list"] + v["one_list"]) == list(range(n_dev))  # 0/1 raw scores for ACC
    for f in ("test_data_analysis.json", "data_analyze.txt", "solution_analysis.txt", "path.png"):
        assert (tmp_path / "itp" / f).is_file()


def test_identical_endpoints_flat_path(tiny, adapter_runs, tmp_path):
    p = adapter_runs[20] / "checkpoint@4"
    assert _interpolate(tiny, tmp_path / "flat", p, p) == 0
    rows = _csv(tmp_path / "flat" / "result.csv")[1:27]
    assert len(rows) == 26 and all(r[3:] == rows[0][3:] for r in rows)
    summary = json.loads((tmp_path / "flat" / "results.json").read_text())
    assert summary["dev"]["perf_barrier"] == 0 and summary["dev"]["loss_barrier"] == 0


def test_full_model_train_interpolate_and_dist(tiny, tmp_path):
    jobs = [_train(tiny, tmp_path / "ft", method="model", steps=2, seed=s) for s in (20, 30)]
    tensors = load_file(str(jobs[0] / "checkpoint@2" / "weights.safetensors"))
    assert "shared.weight" in tensors and "encoder.embed_tokens.weight" not in tensors  # tied copies once
    p1, p2 = jobs[0] / "checkpoint@2", jobs[1] / "checkpoint@2"
    assert _interpolate(tiny, tmp_path / "itp", p1, p2, "--itpl_points", "3", method="model") == 0
    summary = json.loads((tmp_path / "itp" / "results.json").read_text())
    ev = _evaluate(tiny, tmp_path / "ev", p2, method="model")
    assert (
        summary["test"]["metric"][-1] == ev["test_performance"]
        and summary["test"]["loss"][-1] == ev["test_loss"]
    )
    # model/ of a full fine-tuning run is a save_pretrained folder that --load_PET_path reads too (the last step)
    exported = _evaluate(tiny, tmp_path / "evm", jobs[1] / "model", method="model")
    assert (
        exported["test_loss"] == ev["test_loss"] and not (jobs[1] / "model" / "weights.safetensors").exists()
    )
    assert (
        main(
            [
                "dist",
                "--input1",
                str(p1),
                "--input2",
                str(p2),
                "--type",
                "model",
                "--path",
                str(tmp_path / "d"),
            ]
        )
        == 0
    )
    d = json.loads((tmp_path / "d" / "distance.json").read_text())
    assert d["l2"] > 0 and d["n_params"] == sum(v.numel() for v in tensors.values())
    assert (
        main(
            [
                "dist",
                "--input1",
                str(p1),
                "--input2",
                str(p1),
                "--type",
                "model",
                "--path",
                str(tmp_path / "d0"),
            ]
        )
        == 0
    )
    d0 = json.loads((tmp_path / "d0" / "distance.json").read_text())
    assert d0["l2"] == 0 and d0["cosine_similarity"] == pytest.approx(1.0)


def test_bad_inputs_are_one_line_errors(tiny, adapter_runs, tmp_path, capsys):
    ft = _train(tiny, tmp_path / "ft", method="model", steps=2)
    p_adapter = adapter_runs[20] / "checkpoint@4"
    capsys.readouterr()
    assert _interpolate(tiny, tmp_path / "x", p_adapter, ft / "checkpoint@2") == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("is of kind 'model' but --tune_method is 'adapter'") and err.count("error:") == 1
    assert _interpolate(tiny, tmp_path / "x", p_adapter, p_adapter, "--itpl_points", "1") == 2
    assert "itpl_points" in capsys.readouterr().err
    assert (
        main(["dist", "--input1", str(p_adapter), "--input2", str(ft / "checkpoint@2"), "--type", "adapter"])
        == 1
    )
    assert "kind" in capsys.readouterr().err
    bad = tmp_path / "glue-mnli"
    bad.mkdir()
    (bad / "glue-mnli_train.tsv").write_text("premise: a [SEP] hypothesis: b\n")
    assert (
        main(["train", "--task_dir", str(bad), "--model", tiny["model"], "--output_dir", str(tmp_path / "o")])
        == 1
    )
    assert "glue-mnli_train.tsv:1" in capsys.readouterr().err
    (bad / "glue-mnli_train.tsv").write_text("premise: a [SEP] hypothesis: b\tneutral\n")
    assert _evaluate_rc(tiny, bad, tmp_path) == 1
    assert "no dev split" in capsys.readouterr().err


def _evaluate_rc(tiny, task, tmp_path):
    return main(
        ["evaluate", "--task_dir", str(task), "--model", tiny["model"], "--output_dir", str(tmp_path / "e")]
    )


@pytest.mark.parametrize("method", ["adapter", "prefix"])
def test_curve_keeps_endpoints_and_writes_best_row(tiny, runs, tmp_path, method):
    p1, p2 = runs(method)[20] / "checkpoint@4", runs(method)[30] / "checkpoint@4"
    args = [
        "curve", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", method, *DELTA_ARGS,
        "--load_stage1_pet_path_list", str(p1), str(p2), "--bend_num", "1", "--bsz_list", "8", "--train_iters", "4",
        "--valid_interval", "2", "--valid_t", "0.5", "--itpl_points", "3", "--eval_mode", "rank", "--learning_rate_list",
        "1e-2", "--output_dir", str(tmp_path / "curve"), "--progress_bar", "false", "--logger", "none",
        "--device", "cpu", *TOL_ARGS,
    ]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "curve"
    rows = _csv(out / "result.csv")
    assert (
        [r[2] for r in rows[1:4]] == ["0.0", "0.5", "1.0"]
        and rows[4][0] == "average"
        and rows[5][1] == "ACC_best"
    )
    itp = tmp_path / "itp"
    assert _interpolate(tiny, itp, p1, p2, "--itpl_points", "3", method=method) == 0
    curve_summary = json.loads((out / "results.json").read_text())
    line_summary = json.loads((itp / "results.json").read_text())
    for idx in (0, -1):  # the curve's ends are the endpoints, exactly
        assert curve_summary["dev"]["loss"][idx] == line_summary["dev"]["loss"][idx]
    best = load_file(str(out / "checkpoint-best" / "weights.safetensors"))
    assert best and all(k.startswith("bend0.") for k in best)


def test_generate_mode_matches_its_predictions(tiny, adapter_runs, tmp_path):
    args = [
        "evaluate", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", "adapter", "--adapter_size", "4",
        "--load_PET_path", str(adapter_runs[20] / "checkpoint@4"), "--eval_mode", "generate", "--output_dir",
        str(tmp_path / "gen"), "--device", "cpu", *TOL_ARGS,
    ]  # fmt: skip
    assert main(args) == 0
    ev = json.loads((tmp_path / "gen" / "results.json").read_text())
    preds = json.loads((tmp_path / "gen" / "predictions.json").read_text())
    from mode_connectivity.data import load_split
    from mode_connectivity.metrics import evaluate_predictions

    golds = [ex.answers for ex in load_split(tiny["task"], "dev")]
    assert len(preds["dev"]) == len(golds) and all(
        p == p.strip() and "<extra_id_0>" not in p for p in preds["dev"]
    )
    assert ev["dev_performance"] == evaluate_predictions("ACC", preds["dev"], golds)


@pytest.mark.gpu
def test_cuda_sweep_exact_ends_and_bf16_eval(tiny, adapter_runs, tmp_path):
    p1, p2 = adapter_runs[20] / "checkpoint@4", adapter_runs[30] / "checkpoint@4"
    args = ["--device", "cuda", "--bf16"]
    assert _interpolate(tiny, tmp_path / "gpu", p1, p2, "--itpl_points", "3", *args) == 0
    summary = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert all(0.0 <= m <= 1.0 for m in summary["dev"]["metric"])
    from mode_connectivity.models import build_for_method, delta_state, load_checkpoint
    from mode_connectivity.sweep import InterpolationSweep

    cfg = type("C", (), {"model": tiny["model"], "tune_method": "adapter", "adapter_type": "houlsby", "adapter_size": 4,
                         "r_mean": 0.0, "r_std": 0.02, "lora_r": 10, "lora_alpha": 16, "num_virtual_tokens": 20,
                         "prefix_projection": False})()  # fmt: skip
    model = build_for_method(cfg, seed=0).cuda()
    t1, t2 = load_checkpoint(p1)[0], load_checkpoint(p2)[0]
    sweep = InterpolationSweep(delta_state(model, "adapter"), t1, t2)
    for a, ref in ((0.0, t1), (1.0, t2)):
        sweep.set(a)
        live = delta_state(model, "adapter")
        assert all(torch.equal(live[k].cpu(), ref[k]) for k in ref)


@pytest.mark.parametrize(
    ("method", "eval_mode"), [("lora", "rank"), ("prefix", "rank"), ("prefix", "generate")]
)
def test_peft_training_interpolation_and_dist(tiny, runs, adapter_runs, tmp_path, capsys, method, eval_mode):
    jobs = runs(method)
    p1, p2 = jobs[20] / "checkpoint@4", jobs[30] / "checkpoint@4"
    tensors = load_file(str(p1 / "weights.safetensors"))
    assert json.loads((p1 / "meta.json").read_text())["kind"] == method
    # the trained model (Lightning's last.ckpt) is a fresh one with only the checkpoint's delta tensors moved
    fresh = build_for_method(
        EvaluateConfig(model=tiny["model"], tune_method=method, lora_r=2, num_virtual_tokens=3)
    )
    delta = set(delta_state(fresh, method))
    assert delta == set(tensors) and all(DELTA_MARKERS[method] in k for k in delta)
    # model/: Auto classes load the LoRA-merged model (the backbone for prefix), peft loads model/peft/, and
    # weights.safetensors beside them is the delta of the last update (= checkpoint@4 here)
    from peft import PeftModel
    from transformers import AutoModelForSeq2SeqLM

    export = jobs[20] / "model"
    last = load_file(str(export / "weights.safetensors"))
    assert set(last) == delta and all(torch.equal(last[k], tensors[k]) for k in delta)
    tuned = build_for_method(
        EvaluateConfig(model=tiny["model"], tune_method=method, lora_r=2, num_virtual_tokens=3)
    )
    from mode_connectivity.models import load_into

    load_into(tuned, last, method)
    ids = torch.tensor([[5, 6, 7, 1]])
    with torch.no_grad():
        want = tuned.eval()(input_ids=ids, labels=ids).logits
        peft_model = PeftModel.from_pretrained(load_t5(tiny["model"]), export / "peft").eval()
        torch.testing.assert_close(peft_model(input_ids=ids, labels=ids).logits, want)
        if method == "lora":
            merged = AutoModelForSeq2SeqLM.from_pretrained(export).eval()
            torch.testing.assert_close(merged(input_ids=ids, labels=ids).logits, want, rtol=1e-5, atol=1e-5)
    ckpt = torch.load(jobs[20] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    trained = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    before = fresh.state_dict()
    assert set(trained) == set(before)
    assert all(torch.equal(trained[k], v) for k, v in before.items() if k not in delta)
    assert any(not torch.equal(trained[k], before[k]) for k in delta)
    # the path's ends are the endpoints' own evaluations, exactly
    assert (
        _interpolate(tiny, tmp_path / "itp", p1, p2, "--itpl_points", "3", method=method, eval_mode=eval_mode)
        == 0
    )
    summary = json.loads((tmp_path / "itp" / "results.json").read_text())
    for idx, path in ((0, p1), (-1, p2)):
        ev = _evaluate(tiny, tmp_path / f"ev{idx}", path, method=method, eval_mode=eval_mode)
        for split in ("dev", "test"):
            assert summary[split]["metric"][idx] == ev[f"{split}_performance"]
            assert summary[split]["loss"][idx] == ev[f"{split}_loss"]
    # dist over the delta tensors; a checkpoint of another method is refused (dist and interpolate)
    dist = ["dist", "--input1", str(p1), "--input2", str(p2), "--type", method, "--path", str(tmp_path / "d")]
    assert main(dist) == 0
    d = json.loads((tmp_path / "d" / "distance.json").read_text())
    assert d["l2"] > 0 and d["n_params"] == sum(v.numel() for v in tensors.values())
    other = adapter_runs[20] / "checkpoint@4"
    capsys.readouterr()
    assert main(["dist", "--input1", str(p1), "--input2", str(other), "--type", method]) == 1
    assert capsys.readouterr().err.strip().endswith(f"is of kind 'adapter' but --tune_method is '{method}'")
    assert _interpolate(tiny, tmp_path / "mixed", p1, other, method=method) == 1


def test_layer_mix_groups_and_run(tiny, adapter_runs, tmp_path, capsys):
    from mode_connectivity.layer_mix import Mixture, group_of

    assert group_of("encoder.block.3.layer.1.DenseReluDense.wi.weight", "block") == "encoder.block.3"
    assert group_of("encoder.block.3.layer.1.DenseReluDense.wi.weight", "layer") == "encoder.block.3.layer.1"
    assert group_of("shared.weight", "block") == "shared.weight"
    t1 = {
        "encoder.block.0.layer.0.x": torch.zeros(2),
        "encoder.block.0.layer.1.y": torch.zeros(3),
        "shared.weight": torch.zeros(1),
    }
    t2 = {k: torch.ones_like(v) for k, v in t1.items()}
    mix = Mixture(t1, t2, "block", 10.0, torch.Generator().manual_seed(0))
    assert mix.groups == ["encoder.block.0", "shared.weight"]
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 100.0]))
    point = mix.point()  # sigmoid(0) = 0.5 of endpoint 1; sigmoid(100) = 1 -> endpoint 1 exactly
    assert torch.equal(point["encoder.block.0.layer.1.y"], torch.full((3,), 0.5)) and torch.equal(
        point["shared.weight"], torch.zeros(1)
    )
    p1, p2 = adapter_runs[20] / "checkpoint@4", adapter_runs[30] / "checkpoint@4"
    args = [
        "layer-mix", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", "adapter", "--adapter_size", "4",
        "--load_stage1_pet_path_list", str(p1), str(p2), "--layer_filter", "layer", "--train_iters", "2", "--bsz", "8",
        "--eval_mode", "rank", "--output_dir", str(tmp_path / "mix"), "--progress_bar", "false", "--logger", "none",
        "--device", "cpu", *TOL_ARGS,
    ]  # fmt: skip
    assert main(args) == 0
    out = json.loads((tmp_path / "mix" / "results.json").read_text())
    assert (tmp_path / "mix" / "DONE").is_file() and (tmp_path / "mix" / "model" / "config.json").is_file()
    assert len(out["weights_of_endpoint_1"]) == 2 * 1 + 3 * 1  # one group per T5 sublayer holding adapters
    assert all(0.0 <= w <= 1.0 for w in out["weights_of_endpoint_1"].values()) and "dev_performance" in out
    # a finished run is refused; --overwrite trains it again from step 0 (metrics.jsonl holds each step once)
    capsys.readouterr()
    assert main(args) == 1 and "holds a finished run" in capsys.readouterr().err
    assert main([*args, "--overwrite", "true", "--log_every_n_steps", "1"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "mix" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "train_loss" in r]
    assert steps == sorted(set(steps)) and len(steps) == 2 and (tmp_path / "mix" / "DONE").is_file()


def test_train_sweep_one_folder_per_job_and_a_table_that_keeps_every_seed(tiny, tmp_path):
    """Several learning rates: one run folder per job; results.csv has a column per swept value and the seed, and a
    second seed into the same --output_dir adds its rows instead of overwriting the first seed's."""
    out = tmp_path / "sweep"
    for seed in (20, 30):
        args = [
            "train", "--task_dir", tiny["task"], "--model", tiny["model"], "--tune_method", "adapter", *DELTA_ARGS,
            "--learning_rate_list", "1e-2", "2e-2", "--bsz_list", "4", "--train_iters", "1", "--do_valid", "false",
            "--do_predict", "false", "--output_dir", str(out), "--seed", str(seed), "--progress_bar", "false",
            "--logger", "none", "--device", "cpu", *TOL_ARGS,
        ]  # fmt: skip
        assert main(args) == 0
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted((r["lr"], r["seed"]) for r in rows) == [
        ("0.01", "20"),
        ("0.01", "30"),
        ("0.02", "20"),
        ("0.02", "30"),
    ]
    for r in rows:
        run = Path(r["run"])
        assert (
            run.parent == out
            and run.name == f"lr_{r['lr']}_bsz_4_seed_{r['seed']}"
            and (run / "DONE").is_file()
        )
        assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "model" / "config.json").is_file()


def test_batch_accumulation_and_model_are_checked_before_training(tiny, tmp_path, capsys):
    """--bsz_list is the global batch, read in --accumulate_grad_batches micro-batches: one that does not divide it
    is a usage error; a folder that is not a T5 is refused in one line; nothing is written."""
    from lmlab.testing import save_tiny_model

    roberta = save_tiny_model(tmp_path / "roberta", "roberta")
    capsys.readouterr()
    base = [
        "train",
        "--task_dir",
        tiny["task"],
        "--model",
        tiny["model"],
        "--output_dir",
        str(tmp_path / "o"),
    ]
    assert main([*base, "--bsz_list", "6", "--accumulate_grad_batches", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--bsz_list" in err and "--accumulate_grad_batches 4" in err and err.count("\n") == 0
    base[4] = str(roberta)
    assert main(base) == 1
    err = capsys.readouterr().err.strip()
    assert "is a 'roberta' model, not a T5" in err and err.count("\n") == 0
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attn_implementation_reaches_the_model(tiny, attn):
    from mode_connectivity.config import TrainConfig

    cfg = TrainConfig(
        model=tiny["model"], task_dir=tiny["task"], tune_method="adapter", attn_implementation=attn
    )
    assert build_for_method(cfg).config._attn_implementation == attn
