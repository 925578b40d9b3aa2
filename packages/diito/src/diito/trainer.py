"""`diito train`: the distiller as a LightningModule (spec sections 4-5).

Lightning does devices/DDP, precision (bf16 autocast; the loss maths is fp32 in `losses`), gradient accumulation
(no remainder leaking across epochs: the data stream is endless and the budget is counted in optimiser steps),
norm clipping, checkpoints and resume; lmlab's TrainMode sets the modes (the student trains with dropout, the teacher,
declared in `eval_modules`, stays in eval mode). The teacher is kept out of the module's parameters (never
checkpointed, never wrapped by DDP), run under `inference_mode`, and cast to bf16 when training in bf16.
An "epoch" is one pass over the dataset in that stream: with `--save_each_epoch` the student is exported to
`<output_dir>/epoch_<k>/` after the optimiser step that consumed epoch k's last micro-batch.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch
from lmlab.errors import LmlabError
from torch import nn
from torch.utils.data import DataLoader

from diito.config import TrainConfig
from diito.data.dataset import GroupedBatchSampler, batches_per_epoch
from diito.distill import LossWeights, distill_losses


def position_embedding_modules(model: nn.Module) -> list[nn.Module]:
    return [
        m
        for name, m in model.named_modules()
        if name.endswith(("position_embeddings", ".wpe")) and isinstance(m, nn.Embedding)
    ]


class DiitoModule(pl.LightningModule):
    eval_modules = (
        "teacher",
    )  # frozen, dropout off; held outside the module tree (TrainMode still finds it)

    def __init__(
        self,
        cfg: TrainConfig,
        student: nn.Module,
        teacher: nn.Module,
        dataset,
        collator,
        entries,
        total_steps: int,
    ):
        super().__init__()
        self.cfg = cfg
        self.student = student  # lmlab's TrainMode puts it in train mode (dropout on) when fitting starts
        self.__dict__["teacher"] = teacher  # not a registered submodule: not checkpointed, not DDP-wrapped
        self.dataset, self.collator, self.entries = dataset, collator, entries
        self.total_steps = total_steps
        self.weights = LossWeights(
            cfg.alpha_ce,
            cfg.alpha_mlm,
            cfg.alpha_cos,
            cfg.alpha_clm,
            cfg.alpha_mse,
            cfg.alpha_causal_ce,
            cfg.alpha_causal_cos,
        )
        self.batches_seen = 0
        self.epochs_exported = 0
        self._site_cache: dict[tuple, tuple] = {}

    def on_fit_start(self) -> None:
        dtype = (
            torch.bfloat16
            if "bf16" in str(self.trainer.precision)
            else (torch.float16 if "16" in str(self.trainer.precision) else None)
        )
        self.teacher.to(self.device)
        if dtype is not None:
            self.teacher.to(dtype)
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def sites_for(self, entry):
        key = tuple(int(x) for x in (entry.tolist() if torch.is_tensor(entry) else entry))
        if key not in self._site_cache:
            from diito.mapping import resolve_sites
            from diito.sites import model_dims

            e, ti, si = key
            t = resolve_sites(self.entries[e].teacher[ti], *model_dims(self.teacher), who="teacher")
            s = resolve_sites(self.entries[e].student[si], *model_dims(self.student), who="student")
            move = lambda d: {k: (None if v is None else v.to(self.device)) for k, v in d.items()}  # noqa: E731
            self._site_cache[key] = (move(t), move(s))
        return self._site_cache[key]

    def losses(self, batch) -> dict:
        """Every loss term of one batch (the total under "loss")."""
        t_sites = s_sites = None
        if self.weights.causal:
            t_sites, s_sites = self.sites_for(batch["entry"])
        return distill_losses(
            self.teacher,
            self.student,
            batch,
            self.weights,
            temperature=self.cfg.temperature,
            teacher_sites=t_sites,
            student_sites=s_sites,
            convention=self.cfg.site_convention,
            detach_student_source=self.cfg.detach_student_source,
            restrict_ce_to_mask=self.cfg.restrict_ce_to_mask,
            fused=self.cfg.fused,
        )

    def training_step(self, batch, batch_idx):
        out = self.losses(batch)
        from lmlab.callbacks import check_finite

        # one sync for all terms: a non-finite term stops the run, naming it, before backward and any save
        check_finite(self.trainer.global_step + 1, out, Path(self.cfg.output_dir) / "checkpoints")
        self.batches_seen += 1
        bs = batch["base_ids"].shape[0]
        for name, value in out.items():
            self.log(f"train/{name}", value.detach(), on_step=True, prog_bar=name == "loss", batch_size=bs)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=True, batch_size=bs)
        self.log(
            "train/tokens", batch["base_mask"].sum().float(), on_step=True, reduce_fx="sum", batch_size=bs
        )
        return out["loss"]

    def configure_optimizers(self):
        from lmlab.training import param_groups
        from transformers import get_scheduler

        opt = torch.optim.AdamW(
            param_groups(self.student, self.cfg.weight_decay),
            lr=self.cfg.learning_rate,
            betas=(0.9, 0.98),
            eps=self.cfg.adam_epsilon,
        )
        warmup = math.ceil(self.cfg.warmup_prop * self.total_steps)  # then linear decay to 0 at the last step
        sched = get_scheduler("linear", opt, num_warmup_steps=warmup, num_training_steps=self.total_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def train_dataloader(self):
        sampler = GroupedBatchSampler(
            self.dataset.lengths,
            self.cfg.batch_size,
            seed=self.cfg.seed,
            group_by_size=self.cfg.group_by_size,
            max_len=self.dataset_max_len,
            start=self.batches_seen,
            rank=self.global_rank,
            world_size=self.trainer.world_size if self._trainer is not None else 1,
        )
        return DataLoader(
            self.dataset,
            batch_sampler=sampler,
            collate_fn=self.collator,
            num_workers=self.cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
        )

    dataset_max_len = 512
    val_dataset = None  # held-out sequences (--validation_file), paired and masked like the training data

    def val_dataloader(self):
        """The held-out set in order, batch b masked from (seed, b) as in training: the same masks, positions and
        pairs at every validation, so successive val/ losses are comparable."""
        bs, n = self.cfg.batch_size, len(self.val_dataset)
        batches = [[(b, 0, i) for i in range(s, min(s + bs, n))] for b, s in enumerate(range(0, n, bs))]
        return DataLoader(self.val_dataset, batch_sampler=batches, collate_fn=self.collator)

    def validation_step(self, batch, batch_idx):
        bs = batch["base_ids"].shape[0]
        for name, value in self.losses(batch).items():
            self.log(f"val/{name}", value, on_epoch=True, batch_size=bs, sync_dist=True)

    def epochs_done(self) -> int:
        """Data epochs (passes over the dataset, all ranks together) whose micro-batches are all inside finished
        optimiser steps: rank r reads global batch r + j * world_size, so g steps consumed batches
        0 .. g * accumulation * world_size - 1 of the stream."""
        per_epoch = batches_per_epoch(len(self.dataset), self.cfg.batch_size)
        consumed = self.trainer.global_step * self.trainer.accumulate_grad_batches * self.trainer.world_size
        return consumed // per_epoch

    def on_train_start(self) -> None:
        self.epochs_exported = self.epochs_done()  # after a resume: the epochs before the checkpoint are done

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if not self.cfg.save_each_epoch:
            return
        done = self.epochs_done()
        if self.trainer.is_global_zero:
            for k in range(self.epochs_exported, done):
                export_student(
                    self.cfg, self.student, Path(self.cfg.output_dir) / f"epoch_{k}", self.trainer.global_step
                )
        self.epochs_exported = done

    def on_save_checkpoint(self, checkpoint):
        checkpoint["batches_seen"] = self.batches_seen

    def on_load_checkpoint(self, checkpoint):
        self.batches_seen = int(checkpoint.get("batches_seen", 0))


def _lm_head(cfg: TrainConfig) -> tuple[type, str]:
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    return (AutoModelForMaskedLM, "masked-LM head") if cfg.mlm else (AutoModelForCausalLM, "causal-LM head")


def _load_teacher(cfg: TrainConfig, attn: str):
    from diito.loading import load_with_head

    if not cfg.teacher_name:
        raise LmlabError("--teacher_name is required")
    cls, head = _lm_head(cfg)
    return load_with_head(
        cls, cfg.teacher_name, "teacher", head, "diito train", cfg.allow_random_head, attn_implementation=attn
    )


def _load_student(cfg: TrainConfig, attn: str):
    from transformers import AutoConfig, DistilBertConfig

    from diito.loading import load_with_head

    cls, head = _lm_head(cfg)
    if cfg.student_pretrained_weights:
        return load_with_head(
            cls,
            cfg.student_pretrained_weights,
            "student",
            head,
            "diito train",
            cfg.allow_random_head,
            attn_implementation=attn,
        )
    if not cfg.student_config:
        raise LmlabError("give --student_pretrained_weights (from `diito extract`) or --student_config")
    path = resolve_shipped(cfg.student_config)
    data = json.loads(path.read_text())
    if cfg.student_type == "distilbert":
        conf = DistilBertConfig(**{k: v for k, v in data.items() if not k.endswith("_")})
    else:
        conf = AutoConfig.for_model(cfg.student_type, **data)
    return cls.from_config(conf, attn_implementation=attn)


def resolve_shipped(name: str) -> Path:
    """A file path, or the name of a reference config / mapping file shipped in lmlab's samples."""
    path = Path(name)
    if path.is_file():
        return path
    from lmlab.data import sample_path

    try:
        return sample_path(f"diito-reference-configs/{name}")
    except LmlabError:
        raise LmlabError(f"{name}: no such file (nor a shipped reference config/mapping)") from None


def build(cfg: TrainConfig):
    """Models, data, collator and mapping for a run: (module, total_steps)."""
    from lmlab.device import resolve_accelerator, resolve_attn_implementation

    from diito.data.binarized import load_binarized, load_token_counts
    from diito.data.dataset import Collator, CollatorOptions, PairedSeqDataset
    from diito.mapping import load_mapping, validate_mapping
    from diito.masking import token_weights
    from diito.sites import model_dims

    attn = resolve_attn_implementation(
        cfg.attn_implementation, "cuda" if resolve_accelerator(cfg.device) == "gpu" else "cpu"
    )
    teacher = _load_teacher(cfg, attn)
    student = _load_student(cfg, attn)
    if teacher.config.vocab_size != student.config.vocab_size:
        raise LmlabError(
            f"teacher vocabulary ({teacher.config.vocab_size}) and student vocabulary ({student.config.vocab_size})"
            " differ; distil into a student built for the teacher's tokenizer"
        )
    if (cfg.alpha_cos > 0 or cfg.alpha_causal_cos > 0) and model_dims(teacher)[1] != model_dims(student)[1]:
        raise LmlabError("--alpha_cos/--alpha_causal_cos need equal teacher and student hidden sizes")
    entries = []
    if cfg.alpha_causal_ce > 0 or cfg.alpha_causal_cos > 0:
        entries = load_mapping(resolve_shipped(cfg.neuron_mapping))
        validate_mapping(entries, model_dims(teacher), model_dims(student))
    if cfg.freeze_pos_embs:
        for m in position_embedding_modules(student):
            m.weight.requires_grad_(False)
    if cfg.freeze_token_type_embds:
        for name, m in student.named_modules():
            if name.endswith("token_type_embeddings"):
                m.weight.requires_grad_(False)
    vocab = teacher.config.vocab_size

    def read(path: str):
        data = load_binarized(path)
        if data.vocab_size > vocab or int(data.ids.max()) >= vocab:
            raise LmlabError(
                f"{path} has ids beyond the teacher's vocabulary ({vocab}); binarize with its tokenizer"
            )
        return data

    data = read(cfg.data_file)
    sp = data.special
    max_len = cfg.max_model_input_size if cfg.max_model_input_size != -1 else _max_positions(teacher)
    cls_id = sp.get("cls", sp.get("bos", -1))
    sep_id = sp.get("sep", sp.get("eos", -1))

    def paired(sequences):
        return PairedSeqDataset(
            sequences,
            cls_id,
            sep_id,
            sp.get("unk"),
            max_len,
            seed=cfg.seed,
            repair_each_epoch=cfg.repair_each_epoch,
        )

    dataset = paired(data.sequences())
    val_dataset = None
    if cfg.validation_file:
        val_data = read(cfg.validation_file)
        if val_data.special != sp:
            raise LmlabError(
                f"{cfg.validation_file} was binarized with other special tokens than {cfg.data_file}; "
                "binarize both with the teacher's tokenizer"
            )
        val_dataset = paired(val_data.sequences())
        if len(val_dataset) == 0:
            raise LmlabError(f"{cfg.validation_file} holds no sequence long enough to validate on")
    weights = None
    if cfg.mlm:
        if not cfg.token_counts:
            raise LmlabError("--mlm needs --token_counts (run `diito token-counts`)")
        counts = load_token_counts(cfg.token_counts, teacher.config.vocab_size)
        specials = [sp[k] for k in ("pad", "cls", "sep", "mask", "unk") if k in sp and sp[k] >= 0]
        weights = token_weights(torch.from_numpy(counts), specials, cfg.mlm_smoothing)
    pad_id = sp.get("pad", 0) if sp.get("pad", -1) >= 0 else 0
    collator = Collator(
        CollatorOptions(
            mlm=cfg.mlm,
            mlm_mask_prop=cfg.mlm_mask_prop,
            word_mask=cfg.word_mask,
            word_keep=cfg.word_keep,
            word_rand=cfg.word_rand,
            causal=bool(entries),
            entry_sizes=tuple((len(e.teacher), len(e.student)) for e in entries) or ((1, 1),),
            interchange_prop=cfg.interchange_prop,
            interchange_max_token=cfg.interchange_max_token,
            interchange_consecutive_only=cfg.interchange_consecutive_only,
            interchange_masked_token_only=cfg.interchange_masked_token_only,
            seed=cfg.seed,
        ),
        pad_id=pad_id,
        mask_id=sp.get("mask"),
        vocab_size=teacher.config.vocab_size,
        weights=weights,
    )
    world = _world_size(cfg)
    per_rank = batches_per_epoch(len(dataset), cfg.batch_size) / world
    total = (
        cfg.max_steps
        if cfg.max_steps != -1
        else int(per_rank / cfg.accumulate_grad_batches * cfg.n_epoch) + 1
    )
    from lmlab.training import compile_module

    # in place: state_dict keys, checkpoints and the exported folders are those of an eager run. Each model always
    # runs with the same hooks in a run (causal or not), so one compiled graph per shape serves every step.
    compile_module(teacher, cfg.compile)
    compile_module(student, cfg.compile)
    module = DiitoModule(cfg, student, teacher, dataset, collator, entries, total)
    module.dataset_max_len = max_len
    module.val_dataset = val_dataset
    return module, total


def _world_size(cfg: TrainConfig) -> int:
    devices = cfg.devices
    if isinstance(devices, int) and devices > 0:
        return devices * cfg.num_nodes
    if isinstance(devices, str) and devices.isdigit():
        return int(devices) * cfg.num_nodes
    return cfg.num_nodes * (max(torch.cuda.device_count(), 1) if torch.cuda.is_available() else 1)


def _max_positions(model) -> int:
    cfg = model.config
    n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512)
    if cfg.model_type in ("roberta", "xlm-roberta"):
        n -= cfg.pad_token_id + 1
    return int(n)


def make_trainer(cfg: TrainConfig, output_dir, max_steps: int):
    """The Lightning Trainer of a run: lmlab's, plus norm clipping and our own rank-aware batch sampler; the
    validation loop only runs with held-out data (--validation_file)."""
    from lmlab.training import build_trainer

    return build_trainer(
        cfg,
        output_dir,
        max_steps=max_steps,
        limit_val_batches=1.0 if cfg.validation_file else 0,
        gradient_clip_val=cfg.max_grad_norm,
        gradient_clip_algorithm="norm",
        use_distributed_sampler=False,
    )


def checked_checkpoint(path: str | None) -> str | None:
    """`path` after checking that it loads as plain tensors and containers (`weights_only`, memory-mapped so a
    large file is not read twice): a crafted pickle is refused with one line before the run writes anything."""
    if path is None:
        return None
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # UnpicklingError for a crafted file, RuntimeError/EOFError for a damaged one
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LmlabError(
            f"cannot resume from {path}: it does not load as a plain checkpoint ({reason}); "
            "delete it or pass --resume never"
        ) from err
    return path


def run_train(cfg: TrainConfig) -> dict:
    """Every input (models, data, mapping, counts, resume checkpoint) is loaded and checked before anything is
    written, so a failed start leaves no half-made run folder that would later look resumable."""
    from lmlab.config import save_config
    from lmlab.io import finish_run, prepare_run_dir, refuse_finished, results_report, write_json
    from lmlab.seed import seed_everything
    from lmlab.training import resume_checkpoint

    refuse_finished(cfg.output_dir, cfg.overwrite)
    if cfg.val_check_interval is not None and not cfg.validation_file:
        print(
            f"[diito train] --val_check_interval {cfg.val_check_interval} has no effect without --validation_file "
            "(no held-out data to validate on)",
            file=sys.stderr,
        )
    seed_everything(cfg.seed)
    module, total = build(cfg)
    ckpt = checked_checkpoint(resume_checkpoint(cfg, cfg.output_dir))
    out = prepare_run_dir(cfg.output_dir, overwrite=cfg.overwrite)
    save_config(cfg, out / "config.yaml")
    write_json(
        out / "parameters.json", {**{k: v for k, v in vars(cfg).items()}, "total_optimizer_steps": total}
    )
    trainer = make_trainer(cfg, out, total)
    trainer.fit(module, ckpt_path=ckpt, weights_only=True)
    result = {"optimizer_steps": int(trainer.global_step), "micro_batches": module.batches_seen}
    if trainer.is_global_zero:
        result.update({k: float(v) for k, v in trainer.callback_metrics.items()})
        text = (
            f"Student distilled from teacher `{cfg.teacher_name}` on `{cfg.data_file}` (seed {cfg.seed}); "
            "`model/` is a stock `save_pretrained` folder, `metrics.jsonl` has every loss term per step. "
            "The values below are the last step's."
        )
        finish_run(
            out,
            result,
            results_report("diito train", result, text),
            export=lambda folder: export_student(cfg, module.student, folder, trainer.global_step),
        )
        print(f"[diito train] student saved to {out / 'model'}; logs in {out / 'metrics.jsonl'}")
    return result


def export_student(cfg: TrainConfig, student: nn.Module, folder: Path, step: int) -> None:
    """The student as a stock `save_pretrained` folder (config.json + safetensors) plus the tokenizer; refused
    when an optimiser step (`step`) left a non-finite weight (finite gradients can still overflow an update)."""
    from transformers import AutoTokenizer

    if not bool(
        torch.isfinite(torch.stack([p.detach().float().abs().max() for p in student.parameters()])).all()
    ):
        raise LmlabError(
            f"step {step}: a student weight is not finite after the optimiser step; nothing exported. Lower "
            "--learning_rate and run again with --resume never (the latest checkpoint may hold these weights)"
        )
    student.save_pretrained(folder)
    name = cfg.tokenizer_name or cfg.teacher_name
    with contextlib.suppress(OSError, ValueError, TypeError):
        AutoTokenizer.from_pretrained(name).save_pretrained(folder)
