"""`invariant-lm train | eval | export | export-body`: loading, tokenising, Lightning training, evaluation, export."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from lmlab.errors import LmlabError

from invariant_lm.config import EvalConfig, ExportConfig, TrainConfig
from invariant_lm.model import INVARIANT_CONFIG, InvariantMLM, load_masked_lm
from invariant_lm.trainer import load_weights_only

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- loading
def load_tokenizer(name: str, use_fast: bool = True, cache_dir: str | None = None, revision: str = "main"):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, use_fast=use_fast, cache_dir=cache_dir, revision=revision)
    except (OSError, ValueError) as err:
        raise LmlabError(f"cannot load a tokenizer from {name}: {str(err).splitlines()[0]}") from err


def model_folder(path: Path) -> Path:
    """The invariant model folder of `path`: its `model/` when `path` is a run folder, else `path`."""
    return path / "model" if (path / "model" / INVARIANT_CONFIG).is_file() else path


def _base_from_args(cfg: TrainConfig, tokenizer, attn: str):
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForMaskedLM

    if cfg.model_name_or_path:
        base = load_masked_lm(
            cfg.model_name_or_path, allow_random_head=cfg.allow_random_head or cfg.init_head or cfg.init_base,
            cache_dir=cfg.cache_dir, revision=cfg.model_revision, attn_implementation=attn,
        )  # fmt: skip
    elif cfg.config_name or cfg.model_type:
        if cfg.config_name:
            config = AutoConfig.from_pretrained(cfg.config_name, cache_dir=cfg.cache_dir)
        else:
            if cfg.model_type not in CONFIG_MAPPING:
                raise LmlabError(f"unknown --model_type {cfg.model_type!r}")
            config = CONFIG_MAPPING[cfg.model_type]()
        try:
            base = AutoModelForMaskedLM.from_config(config, attn_implementation=attn)
        except ValueError as err:
            raise LmlabError(
                f"{config.model_type} has no masked-LM head: {str(err).splitlines()[0]}"
            ) from err
    else:
        raise LmlabError("give --model_name_or_path, or --config_name/--model_type with --tokenizer_name")
    if len(tokenizer) > base.get_input_embeddings().weight.shape[0]:
        base.resize_token_embeddings(len(tokenizer))  # before wrapping, as the spec asks
    return base


def build_model(cfg: TrainConfig, tokenizer, env_names: list[str], attn: str = "sdpa") -> InvariantMLM:
    path = model_folder(Path(cfg.model_name_or_path)) if cfg.model_name_or_path else None
    if path is not None and (path / INVARIANT_CONFIG).is_file():
        model = InvariantMLM.from_pretrained(path)
        model.body.set_attn_implementation(attn)
        if model.env_names != env_names:
            raise LmlabError(
                f"{path} has {model.n_heads} head(s) {model.env_names} but the training data gives {env_names}; "
                "train with the same environments"
            )
        return model
    base = _base_from_args(cfg, tokenizer, attn)
    return InvariantMLM.from_base(base, env_names, head_decoder=cfg.head_decoder, init_head=cfg.init_head,
                                  init_base=cfg.init_base)  # fmt: skip


def _tokenise_envs(envs: dict, tokenizer, max_len: int, cfg) -> dict:
    from invariant_lm.data import tokenize

    out = {}
    for name, ds in envs.items():
        tok = tokenize(ds, tokenizer, max_len, cfg.line_by_line, cfg.preprocessing_num_workers)
        if len(tok) == 0:
            raise LmlabError(
                f"environment {name!r} gives no sequence of {max_len} tokens; add text or lower --max_seq_length"
            )
        out[name] = tok
    return out


def load_validation(files) -> dict:
    """{file: Dataset[text]} of the evaluation files (each read and checked: missing, empty, not UTF-8)."""
    from invariant_lm.data import load_text_file

    return {str(f): load_text_file(f) for f in files}


def eval_sets(tokenizer, texts: dict, cfg, max_len: int) -> dict:
    """{file: evaluation batches with fixed masks} of each {file: Dataset[text]} of `load_validation`."""
    from invariant_lm.data import eval_batches, make_collator, tokenize

    pad = max_len if cfg.pad_to_max_length else None
    collator = make_collator(tokenizer, cfg.mlm_probability, pad)
    sets = {}
    for name, data in texts.items():
        ds = tokenize(data, tokenizer, max_len, cfg.line_by_line, cfg.preprocessing_num_workers)
        sets[name] = eval_batches(ds, collator, cfg.per_device_eval_batch_size, cfg.eval_mask_seed)
    return sets


def evaluate_sets(model, sets: dict, per_head: bool = False) -> dict:
    """Perplexity of the model on each {file: batches} of `eval_sets`."""
    from invariant_lm.trainer import evaluate_batches

    return {name: evaluate_batches(model, batches, per_head=per_head) for name, batches in sets.items()}


# ---------------------------------------------------------------------------------------------- train
def _precision(cfg: TrainConfig) -> tuple[str, bool]:
    """(Lightning precision, fp16): fp16 trains at Lightning's 32-true with the update's own loss scaler."""
    if cfg.fp16 or cfg.precision.startswith("16"):
        return "32-true", True
    if cfg.bf16:
        return "bf16-mixed", False
    return cfg.precision, False


def run_train(cfg: TrainConfig, _stop_after: int | None = None) -> dict:
    """Train (and evaluate) an invariant MLM; returns {train: ..., eval: ...}. Every input (tokenizer, data,
    model, evaluation files, the checkpoint to resume from) is read and checked before the run folder is
    written, so a failed start leaves nothing that looks resumable. The run closes with lmlab's `finish_run`:
    `model/` (a Hugging Face model with the heads beside it, `InvariantMLM.save_pretrained`), `results.json`
    ({train, eval}), `report.md`, then `DONE`."""
    import dataclasses

    from lmlab.config import save_config
    from lmlab.device import resolve_attn_implementation
    from lmlab.io import finish_run, prepare_run_dir, refuse_finished, results_report
    from lmlab.seed import seed_everything
    from lmlab.training import build_trainer, compile_module, resume_checkpoint

    from invariant_lm.data import EnvironmentStreams, default_max_seq_length, load_environments, make_collator
    from invariant_lm.data import total_updates as count_updates
    from invariant_lm.lightning_module import InvariantLightningModule, check_resumable
    from invariant_lm.trainer import OptimSettings, load_weights_only

    world = cfg.devices * cfg.num_nodes if cfg.do_train else 1
    is_main = _launch_rank(cfg) == 0 if world > 1 else True
    out = Path(cfg.output_dir)
    if is_main:
        refuse_finished(out, cfg.overwrite)
    if cfg.do_eval and not cfg.validation_file:
        raise LmlabError("--do_eval needs --validation_file")
    device = "cpu" if (cfg.no_cuda or cfg.use_cpu) else cfg.device
    attn = resolve_attn_implementation(cfg.attn_implementation, _device_type(device))
    seed_everything(cfg.seed)
    tok_name = cfg.tokenizer_name or cfg.model_name_or_path
    if tok_name is None:
        raise LmlabError("give --tokenizer_name (or --model_name_or_path) for the tokenizer")
    tokenizer = load_tokenizer(str(model_folder(Path(tok_name))), cfg.use_fast_tokenizer, cfg.cache_dir,
                               cfg.model_revision)  # fmt: skip
    validation = load_validation(cfg.validation_file) if (cfg.do_eval or cfg.val_check_interval) else {}
    result: dict = {}
    if cfg.do_train:
        envs = load_environments(cfg.train_file, cfg.train_files, cfg.env_column)
        head_names = ["erm"] if cfg.mode == "erm" else list(envs)
        model = build_model(cfg, tokenizer, head_names, attn)
        # --compile: the body (the bulk of the update) in place, so checkpoints keep their keys; the heads run on
        # a data-dependent number of masked positions and are left eager
        compile_module(model.body, cfg.compile)
        max_len = default_max_seq_length(tokenizer, model.config, cfg.max_seq_length)
        env_data = _tokenise_envs(envs, tokenizer, max_len, cfg)
        pad = max_len if cfg.pad_to_max_length else None
        streams = EnvironmentStreams(env_data, make_collator(tokenizer, cfg.mlm_probability, pad),
                                     cfg.per_device_train_batch_size, cfg.seed, world_size=world)  # fmt: skip
        u = count_updates(len(envs), cfg.nb_steps, cfg.max_steps,
                          streams.min_batches_per_epoch() // cfg.accumulate_grad_batches,
                          cfg.num_train_epochs)  # fmt: skip
        if u <= 0:
            raise LmlabError(
                "0 training updates: give --nb_steps N (or --max_steps / --num_train_epochs > 0)"
            )
        precision, fp16 = _precision(cfg)
        # the Trainer counts updates (global_step) and ticks once per micro-batch (manual optimisation: the
        # module accumulates --accumulate_grad_batches micro-batches itself, so Lightning's own stays 1)
        opts = dataclasses.replace(
            cfg, output_dir=str(out), device=device, strategy="ddp" if world > 1 else "auto", precision=precision,
            max_steps=u,
        )  # fmt: skip
        # an overwritten run starts fresh (its checkpoints are removed below); a torchrun worker may start
        # before rank 0 has removed them, so it must not resume from them either
        ckpt = resume_checkpoint(opts, out)
        resumed_step = None
        if ckpt is not None:
            state = load_weights_only(ckpt)
            check_resumable(state, ckpt, model.env_names, u, cfg.accumulate_grad_batches)
            resumed_step = int(state["global_step"])
            del state
        val_sets = eval_sets(tokenizer, validation, cfg, max_len) if cfg.val_check_interval else {}
    else:
        if not cfg.model_name_or_path:
            raise LmlabError("--do_eval without --do_train evaluates --model_name_or_path; give it")
        model = _load_for_eval(cfg.model_name_or_path)
    # ------------------------------------------------------------------ every input is valid: write the run
    if is_main:
        out = prepare_run_dir(
            out, overwrite=cfg.overwrite, also=[out / "train_log.jsonl"]
        )  # --overwrite: afresh
        save_config(cfg, out / "config.yaml")
    else:  # a data-parallel worker: rank 0 owns the run folder (and wrote it before launching this process)
        out.mkdir(parents=True, exist_ok=True)
    if cfg.do_train:
        module = InvariantLightningModule(
            model, streams, OptimSettings.from_args(cfg), u, mode=cfg.mode, head_lr_schedule=cfg.head_lr_schedule,
            accumulate=cfg.accumulate_grad_batches, sparse=cfg.sparse_heads != "off",
            logging_steps=cfg.log_every_n_steps, output_dir=out, heads_saving=cfg.nb_steps_heads_saving,
            model_saving=cfg.nb_steps_model_saving, tokenizer=tokenizer, fp16=fp16,
            val_sets=val_sets, val_every=cfg.val_check_interval,
        )  # fmt: skip
        if is_main:
            tokenizer.save_pretrained(out)  # beside the checkpoints: `eval` of a .ckpt finds it there
        import warnings

        # Lightning warns that a checkpoint of a manually optimised module may hold the weights before the
        # step's optimizer update; here every checkpoint is written after the update's last micro-batch, once
        # its optimizers and schedulers have stepped (InvariantLightningModule.on_train_start keeps it so after
        # a resume), which is the state a resume needs: nothing to warn about.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        extra = {}
        if world > 1:  # Lightning's DDP processes, without the DDP wrapper (invariant_lm.distributed)
            from invariant_lm.distributed import ManualSyncDDPStrategy

            extra["strategy"] = ManualSyncDDPStrategy(start_method="popen")
        trainer = build_trainer(opts, out, accumulate_grad_batches=1, use_distributed_sampler=False,
                                max_steps=_stop_after or u, **extra)  # fmt: skip
        if resumed_step is not None and is_main:
            _trim_log(out / "train_log.jsonl", resumed_step)
            log.warning("resuming from %s", ckpt)
        trainer.fit(module, ckpt_path=ckpt, weights_only=True)
        if _stop_after is not None:
            return {"stopped_at": int(trainer.global_step)}
        if not trainer.is_global_zero:
            return {}  # rank 0 saves, evaluates and closes the run
        model = module.model.cpu()
        result["train"] = module.train_results()
    if cfg.do_eval:
        max_len = default_max_seq_length(tokenizer, model.config, cfg.max_seq_length)
        result["eval"] = evaluate_sets(
            model, eval_sets(tokenizer, validation, cfg, max_len), cfg.eval_per_head
        )
        for f, r in result["eval"].items():
            print(
                f"[invariant-lm] {f}: perplexity {r['perplexity']:.4f} over {r['n_masked_tokens']} masked tokens"
            )
    export = None
    if cfg.do_train:
        export = lambda folder: model.save_pretrained(folder, cfg.mode, tokenizer)  # noqa: E731
    report = results_report(
        f"invariant-lm train ({cfg.mode})", result,
        "`model/`: a Hugging Face model (a masked LM when the heads fold into one, else the body) with every "
        "environment head in `heads.safetensors`; load it all with `InvariantMLM.from_pretrained`.",
    )  # fmt: skip
    finish_run(out, result, report, export=export)
    print(f"[invariant-lm] results in {out}")
    return result


def _device_type(device: str) -> str:
    """cpu or cuda for `resolve_attn_implementation` ("auto" is cuda when a GPU is there)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _launch_rank(cfg: TrainConfig) -> int:
    """This process's global rank in a data-parallel launch, from the environment that Lightning's launcher
    (LOCAL_RANK, NODE_RANK) or torchrun (RANK) sets; 0 in the process that launches the others."""
    import os

    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    return int(os.environ.get("NODE_RANK", 0)) * cfg.devices + int(os.environ.get("LOCAL_RANK", 0))


def _trim_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    rows = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["update"] <= step]
    path.write_text("".join(r + "\n" for r in rows))


# ---------------------------------------------------------------------------------------------- eval
def _load_for_eval(name: str, checkpoint: str | None = None) -> InvariantMLM:
    path = Path(name)
    if path.suffix == ".ckpt":
        return _model_from_lightning_ckpt(path)
    if (model_folder(path) / INVARIANT_CONFIG).is_file():
        model = InvariantMLM.from_pretrained(path)
    else:
        model = InvariantMLM.from_base(name, ["mlm"])  # plain HF MLM = n = 1
    if checkpoint is not None:
        ck = load_weights_only(checkpoint)
        inv = ck.get("invariant")
        if inv is None:
            raise LmlabError(f"{checkpoint} was not written by invariant-lm train")
        envs = inv["invariant_config"]["envs"]
        if envs != model.env_names:
            raise LmlabError(
                f"{checkpoint} has {len(envs)} head(s) {envs} but {name} has {model.n_heads} {model.env_names}; "
                "evaluate it with the model folder of the same run"
            )
        model.load_state_dict({k.removeprefix("model."): v for k, v in ck["state_dict"].items()})
    return model


def _model_from_lightning_ckpt(path: Path) -> InvariantMLM:
    from transformers import AutoConfig, AutoModelForMaskedLM

    ck = load_weights_only(path)
    inv = ck.get("invariant")
    if inv is None:
        raise LmlabError(f"{path} was not written by invariant-lm train")
    cfg_dict = dict(inv["base_config"])
    config = AutoConfig.for_model(cfg_dict.pop("model_type"), **cfg_dict)
    ic = inv["invariant_config"]
    model = InvariantMLM(
        AutoModelForMaskedLM.from_config(config), ic["envs"], head_decoder=ic["head_decoder"]
    )
    model.load_state_dict({k.removeprefix("model."): v for k, v in ck["state_dict"].items()})
    return model


def run_eval(cfg: EvalConfig) -> dict:
    from lmlab.device import torch_device
    from lmlab.io import finish_run, results_report

    from invariant_lm.data import default_max_seq_length

    name = cfg.model_name_or_path
    model = _load_for_eval(name, getattr(cfg, "checkpoint", None))
    tok_name = cfg.tokenizer_name
    if tok_name is None:
        p = Path(name)
        tok_name = str(p.parent.parent if p.suffix == ".ckpt" else model_folder(p))
    tokenizer = load_tokenizer(tok_name)
    texts = load_validation(cfg.validation_file)
    model.to(torch_device(cfg.device))
    max_len = default_max_seq_length(tokenizer, model.config, cfg.max_seq_length)
    results = evaluate_sets(model, eval_sets(tokenizer, texts, cfg, max_len), cfg.eval_per_head)
    for f, r in results.items():
        print(
            f"[invariant-lm] {f}: perplexity {r['perplexity']:.4f} over {r['n_masked_tokens']} masked tokens"
        )
    if cfg.output_dir:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        finish_run(cfg.output_dir, results, results_report(f"invariant-lm eval of {name}", results))
    return results


# ---------------------------------------------------------------------------------------------- export
def run_export(cfg: ExportConfig) -> dict:
    """The model folder of a run (or any invariant-lm model folder, format 1 included) as a standard Hugging Face
    folder: a masked LM when the heads fold into one, else the body, with the heads beside it (the layout of
    `InvariantMLM.save_pretrained`); `--body_only`: the body alone."""
    src = Path(cfg.model_name_or_path)
    model = InvariantMLM.from_pretrained(src)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = None
    tok_src = model_folder(src)
    try:
        tok = load_tokenizer(str(tok_src))
    except LmlabError:
        log.warning("no tokenizer in %s; exporting weights only", tok_src)
    if cfg.body_only:
        model.body.save_pretrained(out)
        if tok is not None:
            tok.save_pretrained(out)
        kind = "body"
    else:
        model.save_pretrained(out, getattr(model, "saved_mode", "irm"), tok)
        kind = json.loads((out / INVARIANT_CONFIG).read_text()).get("hf_export", "invariant")
        if kind == "body":
            print("[invariant-lm] the heads differ (IRM-trained), so no single head equals their mean: the "
                  "Hugging Face model is the body, the heads are in heads.safetensors")  # fmt: skip
    print(f"[invariant-lm] exported {kind} to {out}")
    return {"kind": kind, "output_dir": str(out)}


def run_export_body(cfg: ExportConfig) -> dict:
    cfg.body_only = True
    return run_export(cfg)
