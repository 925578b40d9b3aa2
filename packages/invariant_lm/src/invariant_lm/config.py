"""Config dataclasses of the `invariant-lm` subcommands.

`TrainConfig` carries lmlab's common trainer flags (`TrainerOptions`) and the reference's (Hugging Face-style)
flag names; where the two name the same option the reference spelling is an alias (`TRAIN_ALIASES`), so the
reference README command runs as is apart from the model path. Defaults are HF's and the reference's unless
said otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.training import TrainerOptions

MODES = ("irm", "ensemble", "erm")

# reference (HF Trainer) spelling -> common lmlab flag of `invariant-lm train`
TRAIN_ALIASES = {
    "gradient_accumulation_steps": "accumulate_grad_batches",
    "logging_steps": "log_every_n_steps",
    "save_steps": "checkpoint_every_n_steps",
    "resume_from_checkpoint": "resume",
    "overwrite_output_dir": "overwrite",
}


def _h(text: str, default=None, **bounds):
    """A field with its help text and its range (gt, ge, lt, le), checked by lmlab and shown by --help."""
    return field(default=default, metadata={"help": text, **bounds})


@dataclass
class EvalOptions:
    validation_file: list[str] | None = _h(
        "text file(s) to evaluate, one example per line; each reported separately"
    )
    max_seq_length: int | None = _h(
        "block / truncation length (default min(tokenizer max, 1024), clamped to the model)", ge=2
    )
    line_by_line: bool = _h("one sequence per non-empty line instead of grouped blocks", False)
    pad_to_max_length: bool = _h("pad every line-by-line sequence to max_seq_length", False)
    mlm_probability: float = _h("share of tokens selected for masking", 0.15, gt=0, lt=1)
    per_device_eval_batch_size: int = _h("evaluation batch size", 8, ge=1)
    eval_mask_seed: int = _h("seed of the fixed evaluation masks (same positions for every model)", 1234)
    eval_per_head: bool = _h("also report each head's own perplexity", False)
    preprocessing_num_workers: int | None = _h("processes for tokenisation", ge=1)
    overwrite_cache: bool = _h("accepted (tokenisation is not cached between runs)", False)


@dataclass
class TrainConfig(EvalOptions, TrainerOptions):
    # model
    model_name_or_path: str | None = _h(
        "pretrained masked LM (folder or hub name), or an invariant-lm output folder"
    )
    model_type: str | None = _h("model type for training from scratch (with --tokenizer_name)")
    config_name: str | None = _h("config to build the model from scratch")
    tokenizer_name: str | None = _h("tokenizer (default: the model's)")
    cache_dir: str | None = _h("HF cache folder")
    use_fast_tokenizer: bool = _h("use a fast tokenizer", True)
    model_revision: str = _h("model revision", "main")
    init_head: bool = _h("heads re-initialised (HF init) instead of copies of the pretrained head", False)
    init_base: bool = _h("re-initialise the body too (implies --init_head)", False)
    ensembling: bool = _h("alias of --mode ensemble (reference flag)", False)
    nb_steps_heads_saving: int = _h(
        "save every head's state every N updates into lm_heads/ (0: never)", 0, ge=0
    )
    nb_steps_model_saving: int = _h("save the model into model-<step>/ every N updates (0: never)", 0, ge=0)
    allow_random_head: bool = _h(
        "train from a checkpoint without a masked-LM head (e.g. a BertModel folder): the heads start random, "
        "with a warning (--init_head does the same on purpose)",
        False,
    )
    use_auth_token: bool = _h("accepted, ignored", False)
    do_lower_case: bool = _h("accepted, ignored", False)
    # data
    train_file: str | None = _h(
        "folder with one .txt file per environment (or a .jsonl/.csv with --env_column)"
    )
    train_files: list[str] | None = _h("explicit list of environment text files")
    env_column: str | None = _h("column naming each row's environment when --train_file is one table")
    nb_steps: int = _h("environment updates (body steps); rounded up to whole rounds", 0, ge=0)
    dataset_name: str | None = _h("accepted, unused (as in the reference)")
    dataset_config_name: str | None = _h("accepted, unused (as in the reference)")
    validation_split_percentage: int = _h("accepted, unused (as in the reference)", 5, ge=0, le=100)
    # training (HF names)
    do_train: bool = _h("train (default when neither --do_train nor --do_eval is given)", False)
    do_eval: bool = _h("evaluate on --validation_file after training", False)
    per_device_train_batch_size: int = _h("batch size of one environment update", 8, ge=1)
    learning_rate: float = _h("AdamW learning rate of the body and of every head (README: 1e-5)", 5e-5, gt=0)
    weight_decay: float = _h("AdamW weight decay (not on biases and norms)", 0.0, ge=0)
    adam_beta1: float = _h("AdamW beta1", 0.9, ge=0, lt=1)
    adam_beta2: float = _h("AdamW beta2", 0.999, ge=0, lt=1)
    adam_epsilon: float = _h("AdamW epsilon", 1e-8, ge=0)
    max_grad_norm: float = _h("clip the joint norm of the stepped parameters (<= 0: no clipping)", 1.0)
    warmup_steps: int = _h("LR warm-up updates", 0, ge=0)
    lr_scheduler_type: str = _h("HF scheduler name (linear, cosine, constant, ...)", "linear")
    adafactor: bool = _h("Adafactor instead of AdamW", False)
    fp16: bool = _h("fp16 mixed precision with dynamic loss scaling (GPU; runs on CPU too, slowly)", False)
    bf16: bool = _h("bf16 mixed precision", False)
    num_train_epochs: float = _h(
        "epochs of floor(min env batches) rounds, used when no step count is given", 3.0, ge=0
    )
    eval_steps: int | None = _h(
        "accepted, ignored as in the reference (--val_check_interval evaluates during training)", ge=1
    )
    no_cuda: bool = _h("train on the CPU", False)
    use_cpu: bool = _h("train on the CPU", False)
    # new
    mode: str = _h(
        "irm (IRM-games) | ensemble (all heads every update) | erm (one head, same data stream)", "irm"
    )
    head_decoder: str = _h(
        "private (each head its own decoder) | shared (input-tied decoder in the body)", "private"
    )
    head_lr_schedule: str = _h(
        "reference (every scheduler has horizon U) | own (head horizon U/n)", "reference"
    )
    sparse_heads: str = _h(
        "auto|on: heads only at masked positions during training; off: on every token", "auto"
    )
    # common lmlab trainer flags (TrainerOptions) with this command's defaults and meaning
    output_dir: str = _h("output folder", "runs/invariant_lm")
    device: str = _h("auto | cpu | cuda", "auto")
    devices: int = _h(
        "devices (processes) per node; > 1 trains data-parallel: every rank runs the same environment's update "
        "on its own share of the batch, body + head e gradients averaged across ranks",
        1,
        ge=1,
    )
    num_nodes: int = _h("nodes (data-parallel training over devices x num_nodes processes)", 1, ge=1)
    strategy: str = _h("auto (ddp when devices x num_nodes > 1) | ddp (also under torchrun)", "auto")
    precision: str = _h(
        "auto | 32-true | bf16-mixed | 16-mixed (= --fp16); --bf16/--fp16 override it", "auto"
    )
    max_steps: int = _h("updates, used when --nb_steps is not given (-1: from --num_train_epochs)", -1, ge=-1)
    accumulate_grad_batches: int = _h(
        "micro-batches (same environment) per update (--gradient_accumulation_steps)", 1, ge=1
    )
    log_every_n_steps: int = _h(
        "write metrics.jsonl and train_log.jsonl every N updates (--logging_steps)", 50, ge=1
    )
    val_check_interval: int | None = _h(
        "evaluate --validation_file every N updates during training, logged to metrics.jsonl "
        "(None: only after training)",
        ge=1,
    )
    checkpoint_every_n_steps: int = _h("resumable checkpoint every N updates (--save_steps)", 500, ge=1)
    seed: int = _h("seed of initialisation, data order, masks and dropout", 42)
    overwrite: bool = _h("retrain into a folder holding a finished run (--overwrite_output_dir)", False)
    resume: str = _h(
        "auto (checkpoints/last.ckpt of output_dir if any) | never | PATH.ckpt (--resume_from_checkpoint)",
        "auto",
    )

    def __post_init__(self) -> None:
        if self.ensembling:
            self.mode = "ensemble"
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.head_decoder not in ("private", "shared"):
            raise ValueError(f"--head_decoder must be private or shared, got {self.head_decoder!r}")
        if self.head_lr_schedule not in ("reference", "own"):
            raise ValueError(f"--head_lr_schedule must be reference or own, got {self.head_lr_schedule!r}")
        if self.sparse_heads not in ("auto", "on", "off"):
            raise ValueError(f"--sparse_heads must be auto, on or off, got {self.sparse_heads!r}")
        if self.strategy not in ("auto", "ddp"):
            raise ValueError(
                f"--strategy must be auto or ddp, got {self.strategy!r} (the IRM-games update all-reduces the "
                "stepped gradients itself; ddp_spawn, fsdp and deepspeed are not supported)"
            )
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 exclude each other")
        super().__post_init__()
        if isinstance(self.validation_file, str):
            self.validation_file = [self.validation_file]
        if not self.do_train and not self.do_eval:
            self.do_train = True
            self.do_eval = bool(self.validation_file)


@dataclass
class EvalConfig(EvalOptions):
    model_name_or_path: str | None = _h(
        "invariant-lm output folder, Lightning .ckpt of a run, or plain HF MLM (n = 1)"
    )
    tokenizer_name: str | None = _h("tokenizer (default: the model's)")
    checkpoint: str | None = _h(
        "a Lightning .ckpt of a run to load into --model_name_or_path before evaluating"
    )
    output_dir: str | None = _h("write results.json and report.md here (default: print only)")
    device: str = _h("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        if self.model_name_or_path is None:
            raise ValueError("--model_name_or_path is required")
        if not self.validation_file:
            raise ValueError("--validation_file is required (one or more text files)")
        if isinstance(self.validation_file, str):
            self.validation_file = [self.validation_file]


@dataclass
class ExportConfig:
    model_name_or_path: str | None = _h("invariant-lm output folder")
    output_dir: str | None = _h("where the Hugging Face folder goes")
    body_only: bool = _h("write only the body as a base model (AutoModel)", False)

    def __post_init__(self) -> None:
        if not self.model_name_or_path or not self.output_dir:
            raise ValueError("--model_name_or_path and --output_dir are required")


# the sizes of each `bench --preset`: gpu = the spec's and issue 13's (RoBERTa-base, 16 x 512, bf16 autocast),
# cpu = RoBERTa-base, the targets' settings only, at a batch two cores finish in about two minutes (an update
# takes seconds there), toy = seconds (tests)
ROBERTA_BASE = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "vocab_size": 50265}
BENCH_PRESETS = {
    "gpu": {**ROBERTA_BASE, "batch_size": 16, "seq_len": 512, "n_envs": [1, 2, 4, 8], "sparse": ["on", "off"],
            "warmup": 5, "rounds": 20, "precision": "bf16"},
    "cpu": {**ROBERTA_BASE, "batch_size": 1, "seq_len": 128, "n_envs": [1, 4], "sparse": ["on"], "warmup": 1,
            "rounds": 3, "precision": "fp32"},
    "toy": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "vocab_size": 300, "batch_size": 2, "seq_len": 16,
            "n_envs": [1, 4], "sparse": ["on", "off"], "warmup": 1, "rounds": 3, "precision": "fp32"},
}  # fmt: skip


@dataclass
class BenchConfig:
    output_dir: str = _h("where bench.json and bench.md go", "results/invariant_lm")
    preset: str | None = _h(
        "toy (seconds) | cpu (RoBERTa-base, 1 x 128, fp32, sparse heads) | gpu (RoBERTa-base, 16 x 512, bf16); "
        "default: gpu on a CUDA device, cpu otherwise. The options below override the preset's values"
    )
    device: str = _h("auto | cpu | cuda", "auto")
    hidden_size: int | None = _h("hidden size (RoBERTa-base: 768)", ge=1)
    num_layers: int | None = _h("layers (RoBERTa-base: 12)", ge=1)
    num_heads: int | None = _h("attention heads (RoBERTa-base: 12)", ge=1)
    vocab_size: int | None = _h("vocabulary (RoBERTa: 50265)", ge=8)
    batch_size: int | None = _h("sequences per update", ge=1)
    seq_len: int | None = _h("tokens per sequence", ge=2)
    n_envs: list[int] = _h("environment counts (heads) to time against the plain update", None)
    sparse: list[str] = _h("sparse-heads settings to time (on: heads at masked positions only, off)", None)
    warmup: int | None = _h("untimed updates of each arm before the timed rounds", ge=0)
    rounds: int | None = _h(
        "timed rounds; each runs the plain and the IRM update once, in rotating order", ge=1
    )
    precision: str | None = _h("fp32 | bf16 (autocast)")
    compile: bool = _h("torch.compile both arms (the plain model, the invariant model's body)", False)
    threads: int | None = _h("torch CPU threads (default: torch's)", ge=1)
    seed: int = _h("seed", 0)

    def __post_init__(self) -> None:
        if self.preset is None:
            import torch

            gpu = self.device != "cpu" and torch.cuda.is_available()
            self.preset = "gpu" if gpu else "cpu"
        if self.preset not in BENCH_PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(BENCH_PRESETS)}, got {self.preset!r}")
        for key, value in BENCH_PRESETS[self.preset].items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        if isinstance(self.n_envs, int | str):
            self.n_envs = [self.n_envs]
        self.n_envs = [int(n) for n in self.n_envs]
        if isinstance(self.sparse, str):
            self.sparse = [self.sparse]
        if any(s not in ("on", "off") for s in self.sparse):
            raise ValueError("--sparse values must be on or off")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision must be fp32 or bf16, got {self.precision!r}")
        if min(self.n_envs) < 1:
            raise ValueError("--n_envs must be >= 1")


@dataclass
class DemoConfig:
    output_dir: str = _h("where the demo writes", "results/demo/invariant_lm")
    nb_steps: int = _h("updates", 30, ge=1)
    threads: int = _h("torch CPU threads (1 is fastest for tiny models on a shared machine)", 1, ge=1)


# the sizes `reproduce --quick` uses: one seed, a smoke-sized run of the same code path (the tests run it)
QUICK = {"stage1_steps": 60, "stage2_steps": 24, "train_lines": 100, "test_lines": 40}
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class ReproduceConfig:
    output_dir: str = _h("where results go", "results/invariant_lm")
    seeds: list[int] = _h("seeds of stage 2 (each arm runs every seed)", None)
    quick: bool = _h(
        "smoke-sized run of the same code path: the first seed only, "
        + ", ".join(f"{k} {v}" for k, v in QUICK.items()),
        False,
    )
    arms: list[str] = _h("stage-2 arms: erm and irm (required by the claims), ensemble (optional)", None)
    n_noisy_envs: int = _h(
        "noisy environments, each with its own noise token (plus one clean one)", 3, ge=1, le=10
    )
    noise_words: int = _h(
        "words per noisy environment whose occurrences its noise token may replace", 5, ge=1
    )
    noise_rate: float = _h(
        "probability that an occurrence of one of those words is replaced", 0.4, gt=0, le=1
    )
    data_seed: int = _h("seed of the chain, the noise word sets and the text", 0)
    train_lines: int = _h("sequences per training environment (and of the stage-1 corpus)", 3000, ge=1)
    test_lines: int = _h("held-out sequences, clean and noisy each", 500, ge=1)
    hidden_size: int = _h("hidden size of the tiny BERT (2 layers, 2 attention heads)", 64, ge=2)
    stage1_steps: int = _h("stage-1 updates (clean MLM pretraining)", 6000, ge=1)
    stage1_lr: float = _h("stage-1 learning rate", 1e-3, gt=0)
    stage2_steps: int = _h("stage-2 updates per run (environment updates; whole rounds)", 1000, ge=1)
    stage2_lr: float = _h("stage-2 learning rate (every arm)", 5e-4, gt=0)
    batch_size: int = _h("batch size (sequences per update)", 32, ge=1)
    max_grad_norm: float = _h(
        "stage 2: clip the norm of the stepped gradients at this value (<= 0: no clipping)", 1.0
    )
    lr_scheduler_type: str = _h("stage-2 LR schedule: " + " | ".join(SCHEDULERS), "linear")
    warmup_steps: int = _h("stage-2 LR warm-up updates", 0, ge=0)
    device: str = _h("auto | cpu | cuda", "cpu")
    threads: int = _h("torch CPU threads (1 is fastest for tiny models on a shared machine)", 1, ge=1)

    def __post_init__(self) -> None:
        if self.seeds is None:
            self.seeds = [0, 1, 2]
        if isinstance(self.seeds, int):
            self.seeds = [self.seeds]
        if self.arms is None:
            self.arms = ["erm", "irm", "ensemble"]
        if isinstance(self.arms, str):
            self.arms = [self.arms]
        if not {"erm", "irm"} <= set(self.arms) or not set(self.arms) <= {"erm", "irm", "ensemble"}:
            raise ValueError(f"--arms must hold erm and irm, and may add ensemble; got {self.arms}")
        if self.lr_scheduler_type not in SCHEDULERS:
            raise ValueError(
                f"--lr_scheduler_type must be one of {', '.join(SCHEDULERS)}, got {self.lr_scheduler_type!r}"
            )
        if self.n_noisy_envs * self.noise_words > 40:
            raise ValueError(
                "--n_noisy_envs x --noise_words must be at most 40 (disjoint sets of the 40 words)"
            )
        if self.quick:
            self.seeds = self.seeds[:1]
            for key, value in QUICK.items():
                setattr(self, key, value)
