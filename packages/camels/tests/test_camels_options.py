"""Eval and meta-train options of spec §3.3, §7 and §8.1: eval_every_k snapshots, unrelated_qa_eval
(forgetting on the QA-val pairs), ArchivalQA full_passage, and ReduceLROnPlateau with exact resume."""

import csv
import io
import json
import types

import pandas as pd
import pytest
import torch
from camels.cli import main
from camels.config import EvalConfig, MetaTrainConfig
from camels.data import Stream, build_stream, collate_docs, load_rows, make_synthetic, qa_loc_batch
from camels.evaluate import run_eval
from camels.meta import MetaConfig, MetaTrainer, _pre_loc_logits, base_params, model_logits, outer_loss
from camels.meta_train import MetaTrainModule, plateau_scheduler
from camels.online import adapt, load_params, snapshot_params
from camels.weighting import CaMeLSWeightModel, UniformWeights
from lmlab.errors import LmlabError
from lmlab.testing import save_tiny_model, tiny_config, tiny_model

NO_DROP = {"embd_pdrop": 0.0, "resid_pdrop": 0.0, "attn_pdrop": 0.0}
DOCS = [
    "The river Thames flows through London.",
    "Ada Lovelace wrote notes on the engine in 1843.",
    "Mount Everest is the highest mountain on Earth.",
    "The Eiffel Tower was finished in 1889 in Paris.",
    "Marie Curie won two Nobel prizes for her research.",
]


# ------------------------------------------------------------------------------------------- eval_every_k


def _tiny():
    return tiny_model("gpt2", "clm", seed=0, hidden=16, layers=1, heads=2)  # dropout 0.1 stays on


@pytest.mark.parametrize("acc", [1, 2])
def test_snapshot_after_j_documents_equals_a_run_on_the_first_j_documents(acc):
    """The snapshot taken after j documents is bit-identical to adapting on the stream truncated to j documents
    (same seed, dropout on), and differs from its neighbours: an off-by-one in the callback or a snapshot taken
    before the (accumulated) optimizer step fails."""
    _, tok = _tiny()

    class Cfg:
        lr, optimizer, grad_clip_thresh, max_text_len, loss_norm, grad_acc_steps = (
            1e-2,
            "adam",
            750.0,
            64,
            "padded",
            acc,
        )

    model = _tiny()[0]
    snaps = {}

    def take(n):
        if n % acc == 0:
            snaps[n] = snapshot_params(model)

    torch.manual_seed(1)
    adapt(model, UniformWeights(), Stream(DOCS, []), tok, Cfg, progress=False, after_document=take)
    assert sorted(snaps) == list(range(acc, len(DOCS) + 1, acc))
    for j in snaps:
        short = _tiny()[0]
        torch.manual_seed(1)
        adapt(short, UniformWeights(), Stream(DOCS[:j], []), tok, Cfg, progress=False)
        got = snapshot_params(short)
        assert got.keys() == snaps[j].keys()
        assert all(torch.equal(got[n], snaps[j][n]) for n in got), j
    steps = sorted(snaps)
    for a, b in zip(steps, steps[1:]):
        assert not torch.equal(snaps[a]["transformer.wte.weight"], snaps[b]["transformer.wte.weight"])
    fresh = _tiny()[0]
    load_params(fresh, snaps[steps[-1]])
    assert all(torch.equal(p, snaps[steps[-1]][n]) for n, p in fresh.named_parameters())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("camels_options")
    data = make_synthetic(root / "data", seed=0, n_qa=40, n_meta=8, n_test=4, n_loc=4)
    base = save_tiny_model(root / "base", "gpt2", "clm", hidden=32, layers=2, heads=2, positions=256)
    return root, data, base


def _eval(setup, name, **kw):
    root, data, base = setup
    opts = {
        "dataset": "synthetic",
        "base_model": str(base),
        "test_path": str(data / "test.csv"),
        "weight_model": "uniform",
        "max_text_len": 64,
        "lr": 1e-2,
        "generation_strategy": "greedy",
        "max_new_tokens": 4,
        "generation_batch_size": 8,
        "device": "cpu",
        "progress_bar": False,
        "output_dir": str(root / name),
        **kw,
    }
    return run_eval(EvalConfig(**opts)), root / name


def _rows(path):
    """Per-question rows of a reference-layout CSV (footers dropped)."""
    return list(csv.reader(io.StringIO(path.read_text())))[:-3]


def test_eval_every_k_stream_length_snapshot_equals_final(setup):
    result, out = _eval(setup, "k4", downsample_to=4, eval_every_k=4)
    assert sorted(p.name for p in out.glob("step*")) == ["step4_em.csv", "step4_em_summary.json"]
    assert (out / "step4_em.csv").read_text() == (out / "final_em.csv").read_text()
    assert json.loads((out / "step4_em_summary.json").read_text()) == json.loads(
        (out / "final_em_summary.json").read_text()
    )
    assert result["step4_avg_f1"] == result["avg_f1"]
    curve = list(csv.DictReader((out / "adaptation_curve.csv").open()))
    assert [(r["docs_seen"], r["tag"]) for r in curve] == [("4", "step4"), ("4", "final")]
    assert float(curve[0]["avg_f1"]) == result["avg_f1"]
    assert (out / "adaptation_curve.png").stat().st_size > 0


def test_eval_every_k_snapshots_match_truncated_runs(setup):
    """k = 2 on a 5-document stream: snapshots after 2 and 4 documents (none at 5); the 2-document snapshot
    answers the first documents' questions exactly like a whole run on the stream truncated to 2 documents."""
    result, out = _eval(setup, "k2", downsample_to=5, eval_every_k=2, eval_init=True)
    assert sorted(p.name for p in out.glob("step*_em.csv")) == ["step2_em.csv", "step4_em.csv"]
    curve = list(csv.DictReader((out / "adaptation_curve.csv").open()))
    assert [(int(r["docs_seen"]), r["tag"]) for r in curve] == [
        (0, "init"),
        (2, "step2"),
        (4, "step4"),
        (5, "final"),
    ]
    assert float(curve[1]["em"]) == result["step2_em"]
    _, short = _eval(setup, "trunc2", downsample_to=2)
    short_rows = _rows(short / "final_em.csv")
    assert len(short_rows) == 2  # synthetic/StreamingQA: one question per stream row
    step2 = _rows(out / "step2_em.csv")
    assert step2[:2] == short_rows
    # the snapshots are distinct models (else the check above could not catch an off-by-one)
    views = [_rows(out / f"{t}_em.csv") for t in ("init", "step2", "step4", "final")]
    assert len({json.dumps(v) for v in views}) > 1


# -------------------------------------------------------------------------------------- unrelated_qa_eval


def test_unrelated_qa_eval_forgetting(setup):
    _, data, _ = setup
    qa_val = str(data / "qa_val.csv")
    n_pairs = len(load_rows("synthetic", qa_val))
    res0, out0 = _eval(setup, "qa0", downsample_to=3, lr=0.0, unrelated_qa_eval=True, qa_val_path=qa_val)
    init, final = (out0 / "init_qa_val_em.csv").read_text(), (out0 / "final_qa_val_em.csv").read_text()
    assert init == final and len(_rows(out0 / "final_qa_val_em.csv")) == n_pairs
    assert res0["qa_val_f1_drop"] == 0.0 and res0["init_qa_val_avg_f1"] == res0["final_qa_val_avg_f1"]
    assert json.loads((out0 / "results.json").read_text())["qa_val_f1_drop"] == 0.0
    res1, out1 = _eval(setup, "qa1", downsample_to=3, lr=3e-2, unrelated_qa_eval=True, qa_val_path=qa_val)
    assert (out1 / "init_qa_val_em.csv").read_text() == init  # same start model
    assert _rows(out1 / "final_qa_val_em.csv") != _rows(out1 / "init_qa_val_em.csv")
    assert res1["qa_val_f1_drop"] == pytest.approx(res1["init_qa_val_avg_f1"] - res1["final_qa_val_avg_f1"])
    # eval=ppl: the forgetting is the NLL increase, exactly 0 at lr 0; snapshots get QA-val columns too
    res2, _ = _eval(
        setup, "ppl0", downsample_to=2, lr=0.0, eval="ppl", unrelated_qa_eval=True, qa_val_path=qa_val
    )
    assert res2["qa_val_nll_increase"] == 0.0
    res3, out3 = _eval(
        setup,
        "ppl1",
        downsample_to=2,
        eval="ppl",
        unrelated_qa_eval=True,
        qa_val_path=qa_val,
        eval_every_k=1,
    )
    assert res3["qa_val_nll_increase"] == pytest.approx(res3["final_qa_val_nll"] - res2["init_qa_val_nll"])
    assert res3["qa_val_nll_increase"] != 0.0
    curve = list(csv.DictReader((out3 / "adaptation_curve.csv").open()))
    assert [r["tag"] for r in curve] == ["step1", "step2", "final"]
    assert float(curve[-1]["qa_val_nll"]) == res3["final_qa_val_nll"] == float(curve[-2]["qa_val_nll"])


def test_option_errors_are_one_line(setup, capsys):
    root, data, base = setup
    common = ["eval", "--dataset", "synthetic", "--base_model", str(base), "--weight_model", "uniform"]
    common += ["--output_dir", str(root / "never")]
    for extra, needle in [
        (["--unrelated_qa_eval", "true"], "--qa_val_path"),
        (["--eval_every_k", "0"], "--eval_every_k"),
        (["--eval_every_k", "3", "--grad_acc_steps", "2"], "multiple of --grad_acc_steps"),
        (["--full_passage", "true"], "archivalqa"),
    ]:
        assert main([*common, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
    assert not (root / "never").exists()


# ------------------------------------------------------------------------------------------- full_passage


def _archival(with_article=True):
    rows = []
    for doc in (1, 2):
        for para in (0, 1):
            for q in (0, 1):
                rows.append(
                    {
                        "doc_id": doc,
                        "para_num": para,
                        "ans_paragraph": f"paragraph {para} of article {doc}",
                        "ans_text": f"article {doc}: paragraph 0 of article {doc} paragraph 1 of article {doc}",
                        "question": f"q{doc}{para}{q}",
                        "answer": f"a{doc}{para}{q}",
                    }
                )
    frame = pd.DataFrame(rows).sample(frac=1, random_state=0)  # rows out of paragraph order
    return frame if with_article else frame.drop(columns="ans_text")


def test_full_passage_uses_the_article(tmp_path):
    frame = _archival()
    paras = build_stream("archivalqa", frame, downsample_to=3, seed=0)
    full = build_stream("archivalqa", frame, downsample_to=3, seed=0, full_passage=True)
    assert len(paras.docs) == 3 and all(d.startswith("paragraph") for d in paras.docs)
    # downsample_to still counts paragraphs: the same questions, documents = their articles, de-duplicated
    assert [q for q, _, _ in full.qa] == [q for q, _, _ in paras.qa] and len(full.qa) == 6
    assert sorted(full.docs) == ["article 1: " + "paragraph 0 of article 1 paragraph 1 of article 1"] + [
        "article 2: paragraph 0 of article 2 paragraph 1 of article 2"
    ]
    for q, _, i in full.qa:
        assert full.docs[i].startswith(f"article {q[1]}:")
    assert build_stream("archivalqa", frame, -1, 5, full_passage=True) == build_stream(
        "archivalqa", frame, -1, 5, full_passage=True
    )
    path = tmp_path / "arch.csv"
    frame.to_csv(path, index=False)
    assert {d for d, _, _ in load_rows("archivalqa", path, full_passage=True)} == set(full.docs)
    no_article = tmp_path / "no_article.csv"
    _archival(with_article=False).to_csv(no_article, index=False)
    assert len(load_rows("archivalqa", no_article)) == 8  # not needed when off
    with pytest.raises(LmlabError, match=r"no_article\.csv lacks the column\(s\) ans_text .*full_passage"):
        load_rows("archivalqa", no_article, full_passage=True)


def test_full_passage_missing_column_cli(setup, tmp_path, capsys):
    _, _, base = setup
    path = tmp_path / "test.csv"
    _archival(with_article=False).to_csv(path, index=False)
    args = ["eval", "--dataset", "archivalqa", "--full_passage", "true", "--test_path", str(path)]
    args += ["--base_model", str(base), "--weight_model", "uniform", "--output_dir", str(tmp_path / "o")]
    assert main([*args, "--progress_bar", "false"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "ans_text" in err[0], err


# ------------------------------------------------------------------------------------ reduce_lr_on_plateau


def test_plateau_lr_drops_after_patience_plus_one_bad_validations():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=1e-3)
    sched = plateau_scheduler(opt)
    sched.step(1.0)
    for loss in (1.5, 0.9, 1.2, 1.3, 1.4, 1.1, 1.0):  # 0.9 is a new best: the count restarts after it
        sched.step(loss)
        assert opt.param_groups[0]["lr"] == 1e-3
    sched.step(0.95)  # the 6th validation without a new best
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.7071, rel=1e-12)
    for _ in range(5):
        sched.step(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.7071, rel=1e-12)
    sched.step(2.0)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.7071**2, rel=1e-12)


def _module(tmp_path, losses):
    _, tok = tiny_model("gpt2", "clm", seed=0, hidden=16, layers=1, heads=2)
    base = tiny_model("gpt2", "clm", seed=0, hidden=16, layers=1, heads=2)[0]
    cfg = MetaTrainConfig(
        dataset="synthetic",
        update_batch_size=2,
        reset_base_freq=4,
        reduce_lr_on_plateau=True,
        output_dir=str(tmp_path),
        logger="none",
    )
    wm = CaMeLSWeightModel(tiny_config("gpt2", tok, hidden=16, layers=1, heads=2))
    module = MetaTrainModule(wm, base, tok, [], [], [], [], cfg)
    module._trainer = types.SimpleNamespace(global_rank=0, loggers=[])  # stand-in: rank and loggers only
    opt = module.configure_optimizers()
    module.meta = MetaTrainer(wm, base, opt, cfg, 2, 4)
    module.meta.validate = lambda *a: {"val/total_loss": losses.pop(0)}
    module._val_batches = lambda: ([], [])
    return module, opt


def test_plateau_steps_on_validation_and_resumes_exactly(tmp_path):
    losses = [1.0] + [2.0] * 7
    module, opt = _module(tmp_path / "a", losses)
    for _ in range(4):  # best, then 3 bad validations
        module.validate_and_save()
    module.validate_and_save(step_scheduler=False)  # the end-of-training validation leaves it alone
    assert module.plateau.num_bad_epochs == 3 and module.plateau.best == 1.0
    ckpt = {"state_dict": module.state_dict(), "optimizer": opt.state_dict()}
    module.on_save_checkpoint(ckpt)
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)  # meta-train resumes with weights_only=True

    resumed, opt2 = _module(tmp_path / "b", [2.0, 2.0, 2.0])
    resumed.on_load_checkpoint(ckpt)
    opt2 = (
        resumed.configure_optimizers()
    )  # Lightning: on_load_checkpoint, configure_optimizers, optimizer state
    opt2.load_state_dict(ckpt["optimizer"])
    resumed.meta.optimizer = opt2
    lrs, lrs_resumed = [], []
    for _ in range(3):
        module.validate_and_save()
        resumed.validate_and_save()
        lrs.append(opt.param_groups[0]["lr"])
        lrs_resumed.append(opt2.param_groups[0]["lr"])
    assert lrs == lrs_resumed == [1e-5, 1e-5, pytest.approx(1e-5 * 0.7071, rel=1e-12)]
    assert resumed.plateau.state_dict() == module.plateau.state_dict()


# ------------------------------------------------------------------------------------------------- qa_loc


def test_qa_loc_mask_marks_answer_predicting_positions():
    _, tok = _tiny()
    pairs = [("Where is the Thames?", "London"), ("Who wrote notes in 1843 on the engine?", "Ada")]
    loc = qa_loc_batch(tok, pairs, max_len=128)
    for b, (q, a) in enumerate(pairs):
        nq = len(tok(q, add_special_tokens=False)["input_ids"])
        na = len(tok(" " + a, add_special_tokens=False)["input_ids"]) + 1  # + EOS
        expected = [0] * loc["loc_mask"].shape[1]
        expected[nq - 1 : nq + na - 1] = [1] * na  # position t predicts token t+1
        assert loc["loc_mask"][b].tolist() == expected
        assert int(loc["attention_mask"][b].sum()) == nq + na


def _kl_by_hand(pre, post, mask):
    """Σ_v p(v)(log p(v) − log q(v)) at each position with mask 1, averaged over those positions (loops)."""
    total, count = 0.0, 0
    for b in range(pre.shape[0]):
        for t in range(pre.shape[1]):
            if mask[b, t]:
                p, q = pre[b, t].double().softmax(-1), post[b, t].double().softmax(-1)
                total += sum(float(p[v] * (p[v].log() - q[v].log())) for v in range(p.shape[0]))
                count += 1
    return total / count


def test_qa_loc_outer_loss_two_sets_hand_computed():
    """Total = L_qa + c_kl · (KL_web + KL_qa) / 2, KL_qa only at answer-predicting positions."""
    model, tok = tiny_model("gpt2", "clm", seed=0, hidden=16, layers=1, heads=2, **NO_DROP)
    model = model.double()
    p0 = base_params(model)
    g = torch.Generator().manual_seed(0)
    pk = {n: (p + 0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype)).detach() for n, p in p0.items()}
    web = collate_docs(tok, [DOCS[0], DOCS[1]], 64)
    qa = qa_loc_batch(tok, [("Where is the Thames?", "London"), ("Who won two prizes?", "Marie Curie")])
    batch = {"qa_ids": qa["input_ids"], "qa_mask": qa["attention_mask"]}
    batch["qa_labels"] = torch.where(qa["attention_mask"].bool(), qa["input_ids"], -100)
    cfg = MetaConfig(c_kl=0.1)
    loc = {"open_web_text": web, "qa": qa}
    pre = _pre_loc_logits(model, p0, loc, cfg)
    total, metrics = outer_loss(model, pk, batch, loc, pre, cfg)

    def logits(params, b):
        return model_logits(model, params, b["input_ids"], b["attention_mask"]).detach()

    kl_web = _kl_by_hand(logits(p0, web), logits(pk, web), web["attention_mask"])
    kl_qa = _kl_by_hand(logits(p0, qa), logits(pk, qa), qa["loc_mask"])
    kl_qa_everywhere = _kl_by_hand(logits(p0, qa), logits(pk, qa), qa["attention_mask"])
    assert abs(kl_qa - kl_qa_everywhere) > 1e-6  # the mask matters
    assert metrics["open_web_text_kl_div"] == pytest.approx(kl_web, rel=1e-10)
    assert metrics["qa_kl_div"] == pytest.approx(kl_qa, rel=1e-10)
    expected = metrics["qa_loss"] + 0.1 * (kl_web + kl_qa) / 2
    assert float(total) == pytest.approx(expected, rel=1e-10)
    # θ_K = θ₀: no locality loss at all; one set alone is not divided by 2
    same, m0 = outer_loss(model, p0, batch, loc, pre, cfg)
    assert m0["qa_kl_div"] == pytest.approx(0.0, abs=1e-12) and float(same.detach()) == pytest.approx(
        m0["qa_loss"]
    )
    only_qa, _ = outer_loss(model, pk, batch, {"qa": qa}, {"qa": pre["qa"]}, cfg)
    assert float(only_qa) == pytest.approx(metrics["qa_loss"] + 0.1 * kl_qa, rel=1e-10)


def test_qa_loc_module_builds_both_sets(tmp_path):
    module, _ = _module(tmp_path, [])
    rows = [(DOCS[i], f"question {i}?", f"answer {i}") for i in range(3)]
    module.cfg.qa_loc, module.cfg.loc_batch_size = True, 2
    sets = module._loc_batch(["web text one", "web text two"], rows, 1)
    assert sorted(sets) == ["open_web_text", "qa"]
    assert sets["open_web_text"]["input_ids"].shape[0] == 2 and sets["qa"]["loc_mask"].shape[0] == 2
    # items 2 and 3 of the cycled list (index 1, two per batch): rows 2 and 0
    pairs = [(q, a) for _, q, a in (rows[2], rows[0])]
    assert torch.equal(sets["qa"]["input_ids"], qa_loc_batch(module.tokenizer, pairs)["input_ids"])
    module.cfg.web_text_loc = False
    assert sorted(module._loc_batch(["web"], rows, 0)) == ["qa"]
    module.cfg.c_kl = 0.0
    assert module._loc_batch(["web"], rows, 0) is None


@pytest.mark.slow
def test_meta_train_qa_loc_and_plateau_resume(setup):
    """A real Lightning run with qa_loc and reduce_lr_on_plateau: both locality KLs and the lr are logged, and
    an interrupted run (2 updates, resumed to 4 with the scheduler state from last.ckpt) equals a straight one."""
    root, data, _ = setup
    # no dropout here; exact resume with dropout on is tested in test_camels_resume.py
    base = save_tiny_model(root / "base_nodrop", "gpt2", "clm", hidden=32, layers=2, heads=2, **NO_DROP)
    args = [
        "meta-train",
        "--dataset",
        "synthetic",
        "--base_model",
        str(base),
        "--pretrained_model",
        str(base),
    ]
    args += ["--train_path", str(data / "train.csv"), "--val_path", str(data / "val.csv")]
    args += ["--loc_train_path", str(data / "owt_train.csv"), "--loc_val_path", str(data / "owt_val.csv")]
    opts = {
        "update_batch_size": 2,
        "reset_base_freq": 4,
        "grad_acc_steps": 2,
        "max_text_len": 64,
        "inner_lr": 0.05,
        "outer_lr": 1e-3,
        "val_steps": 1,
        "val_max_batches": 2,
        "inner_dropout": "false",
        "logger": "csv",
        "checkpoint_every_n_steps": 1,
        "qa_loc": "true",
        "reduce_lr_on_plateau": "true",
        "progress_bar": "false",
    }
    args += [x for k, v in opts.items() for x in (f"--{k}", str(v))]
    assert main([*args, "--output_dir", str(root / "mt"), "--max_steps", "2"]) == 0
    (root / "mt" / "DONE").unlink()  # as a run killed after its last checkpoint (a finished one is refused)
    assert main([*args, "--output_dir", str(root / "mt"), "--max_steps", "4"]) == 0
    assert main([*args, "--output_dir", str(root / "st"), "--max_steps", "4"]) == 0
    resumed = torch.load(root / "mt" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    straight = torch.load(root / "st" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for k in straight:
        assert torch.allclose(resumed[k], straight[k], rtol=1e-4, atol=1e-7), k
    logged = list(csv.DictReader((root / "st" / "logs" / "version_0" / "metrics.csv").open()))
    val = [r for r in logged if r.get("val/qa_kl_div")]
    assert len(val) == 5 and all(float(r["outer_lr"]) == 1e-3 and r["val/open_web_text_kl_div"] for r in val)
    ckpt = torch.load(root / "mt" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["camels"]["plateau"]["last_epoch"] == 4  # validations at batches 0, 2, 4, 6 (not at the end)
