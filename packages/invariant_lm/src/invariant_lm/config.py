"""Config dataclasses of the `invariant-lm` subcommands.

`TrainConfig` carries lmlab's common trainer flags (`TrainerOptions`) and the reference's (Hugging Face-style)
flag names; where the two name the same option the reference spelling is an alias (`TRAIN_ALIASES`), so the
reference README command runs as is apart from the model path. Defaults are HF's and the reference's unless
said otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.config import option
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


@dataclass
class EvalOptions:
    validation_file: list[str] | None = option(
        "text file(s) to evaluate, one example per line; each reported separately", None
    )
    max_seq_length: int | None = option(
        "block / truncation length (default min(tokenizer max, 1024), clamped to the model)", None, ge=2
    )
    line_by_line: bool = option("one sequence per non-empty line instead of grouped blocks", False)
    pad_to_max_length: bool = option("pad every line-by-line sequence to max_seq_length", False)
    mlm_probability: float = option("share of tokens selected for masking", 0.15, gt=0, lt=1)
    per_device_eval_batch_size: int = option("evaluation batch size", 8, ge=1)
    eval_mask_seed: int = option("seed of the fixed evaluation masks (same positions for every model)", 1234)
    eval_per_head: bool = option("also report each head's own perplexity", False)
    preprocessing_num_workers: int | None = option("processes for tokenisation", None, ge=1)
    overwrite_cache: bool = option("accepted (tokenisation is not cached between runs)", False)


@dataclass
class TrainConfig(EvalOptions, TrainerOptions):
    # model
    model_name_or_path: str | None = option(
        "pretrained masked LM (folder or hub name), or an invariant-lm output folder", None
    )
    model_type: str | None = option("model type for training from scratch (with --tokenizer_name)", None)
    config_name: str | None = option("config to build the model from scratch", None)
    tokenizer_name: str | None = option("tokenizer (default: the model's)", None)
    cache_dir: str | None = option("HF cache folder", None)
    use_fast_tokenizer: bool = option("use a fast tokenizer", True)
    model_revision: str = option("model revision", "main")
    init_head: bool = option("heads re-initialised (HF init) instead of copies of the pretrained head", False)
    init_base: bool = option("re-initialise the body too (implies --init_head)", False)
    ensembling: bool = option("alias of --mode ensemble (reference flag)", False)
    nb_steps_heads_saving: int = option(
        "save every head's state every N updates into lm_heads/ (0: never)", 0, ge=0
    )
    nb_steps_model_saving: int = option(
        "save the model into model-<step>/ every N updates (0: never)", 0, ge=0
    )
    allow_random_head: bool = option(
        "train from a checkpoint without a masked-LM head (e.g. a BertModel folder): the heads start random, "
        "with a warning (--init_head does the same on purpose)",
        False,
    )
    use_auth_token: bool = option("accepted, ignored", False)
    do_lower_case: bool = option("accepted, ignored", False)
    # data
    train_file: str | None = option(
        "folder with one .txt file per environment (or a .jsonl/.csv with --env_column)", None
    )
    train_files: list[str] | None = option("explicit list of environment text files", None)
    env_column: str | None = option(
        "column naming each row's environment when --train_file is one table", None
    )
    nb_steps: int = option("environment updates (body steps); rounded up to whole rounds", 0, ge=0)
    dataset_name: str | None = option("accepted, unused (as in the reference)", None)
    dataset_config_name: str | None = option("accepted, unused (as in the reference)", None)
    validation_split_percentage: int = option("accepted, unused (as in the reference)", 5, ge=0, le=100)
    # training (HF names)
    do_train: bool = option("train (default when neither --do_train nor --do_eval is given)", False)
    do_eval: bool = option("evaluate on --validation_file after training", False)
    per_device_train_batch_size: int = option("batch size of one environment update", 8, ge=1)
    learning_rate: float = option(
        "AdamW learning rate of the body and of every head (README: 1e-5)", 5e-5, gt=0
    )
    weight_decay: float = option("AdamW weight decay (not on biases and norms)", 0.0, ge=0)
    adam_beta1: float = option("AdamW beta1", 0.9, ge=0, lt=1)
    adam_beta2: float = option("AdamW beta2", 0.999, ge=0, lt=1)
    adam_epsilon: float = option("AdamW epsilon", 1e-8, ge=0)
    max_grad_norm: float = option("clip the joint norm of the stepped parameters (<= 0: no clipping)", 1.0)
    warmup_steps: int = option("LR warm-up updates", 0, ge=0)
    lr_scheduler_type: str = option("HF scheduler name (linear, cosine, constant, ...)", "linear")
    adafactor: bool = option("Adafactor instead of AdamW", False)
    fp16: bool = option(
        "fp16 mixed precision with dynamic loss scaling (GPU; runs on CPU too, slowly)", False
    )
    bf16: bool = option("bf16 mixed precision", False)
    num_train_epochs: float = option(
        "epochs of floor(min env batches) rounds, used when no step count is given", 3.0, ge=0
    )
    eval_steps: int | None = option(
        "accepted, ignored as in the reference (--val_check_interval evaluates during training)", None, ge=1
    )
    no_cuda: bool = option("train on the CPU", False)
    use_cpu: bool = option("train on the CPU", False)
    # new
    mode: str = option(
        "irm (IRM-games) | ensemble (all heads every update) | erm (one head, same data stream)", "irm"
    )
    head_decoder: str = option(
        "private (each head its own decoder) | shared (input-tied decoder in the body)", "private"
    )
    head_lr_schedule: str = option(
        "reference (every scheduler has horizon U) | own (head horizon U/n)", "reference"
    )
    sparse_heads: str = option(
        "auto|on: heads only at masked positions during training; off: on every token", "auto"
    )
    # common lmlab trainer flags (TrainerOptions) with this command's defaults and meaning
    output_dir: str = option("output folder", "runs/invariant_lm")
    device: str = option("auto | cpu | cuda", "auto")
    devices: int = option(
        "devices (processes) per node; > 1 trains data-parallel: every rank runs the same environment's update "
        "on its own share of the batch, body + head e gradients averaged across ranks",
        1,
        ge=1,
    )
    num_nodes: int = option("nodes (data-parallel training over devices x num_nodes processes)", 1, ge=1)
    strategy: str = option("auto (ddp when devices x num_nodes > 1) | ddp (also under torchrun)", "auto")
    precision: str = option(
        "auto | 32-true | bf16-mixed | 16-mixed (= --fp16); --bf16/--fp16 override it", "auto"
    )
    max_steps: int = option(
        "updates, used when --nb_steps is not given (-1: from --num_train_epochs)", -1, ge=-1
    )
    accumulate_grad_batches: int = option(
        "micro-batches (same environment) per update (--gradient_accumulation_steps)", 1, ge=1
    )
    log_every_n_steps: int = option(
        "write metrics.jsonl and train_log.jsonl every N updates (--logging_steps)", 50, ge=1
    )
    val_check_interval: int | None = option(
        "evaluate --validation_file every N updates during training, logged to metrics.jsonl "
        "(None: only after training)",
        None,
        ge=1,
    )
    checkpoint_every_n_steps: int = option("resumable checkpoint every N updates (--save_steps)", 500, ge=1)
    seed: int = option("seed of initialisation, data order, masks and dropout", 42)
    overwrite: bool = option("retrain into a folder holding a finished run (--overwrite_output_dir)", False)
    resume: str = option(
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
    model_name_or_path: str | None = option(
        "invariant-lm output folder, Lightning .ckpt of a run, or plain HF MLM (n = 1)", None
    )
    tokenizer_name: str | None = option("tokenizer (default: the model's)", None)
    checkpoint: str | None = option(
        "a Lightning .ckpt of a run to load into --model_name_or_path before evaluating", None
    )
    output_dir: str | None = option("write results.json and report.md here (default: print only)", None)
    device: str = option("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        if self.model_name_or_path is None:
            raise ValueError("--model_name_or_path is required")
        if not self.validation_file:
            raise ValueError("--validation_file is required (one or more text files)")
        if isinstance(self.validation_file, str):
            self.validation_file = [self.validation_file]


@dataclass
class ExportConfig:
    model_name_or_path: str | None = option("invariant-lm output folder", None)
    output_dir: str | None = option("where the Hugging Face folder goes", None)
    body_only: bool = option("write only the body as a base model (AutoModel)", False)

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
    output_dir: str = option("where bench.json and bench.md go", "results/invariant_lm")
    preset: str | None = option(
        "toy (seconds) | cpu (RoBERTa-base, 1 x 128, fp32, sparse heads) | gpu (RoBERTa-base, 16 x 512, bf16); "
        "default: gpu on a CUDA device, cpu otherwise. The options below override the preset's values",
        None,
    )
    device: str = option("auto | cpu | cuda", "auto")
    hidden_size: int | None = option("hidden size (RoBERTa-base: 768)", None, ge=1)
    num_layers: int | None = option("layers (RoBERTa-base: 12)", None, ge=1)
    num_heads: int | None = option("attention heads (RoBERTa-base: 12)", None, ge=1)
    vocab_size: int | None = option("vocabulary (RoBERTa: 50265)", None, ge=8)
    batch_size: int | None = option("sequences per update", None, ge=1)
    seq_len: int | None = option("tokens per sequence", None, ge=2)
    n_envs: list[int] = option("environment counts (heads) to time against the plain update", None)
    sparse: list[str] = option(
        "sparse-heads settings to time (on: heads at masked positions only, off)", None
    )
    warmup: int | None = option("untimed updates of each arm before the timed rounds", None, ge=0)
    rounds: int | None = option(
        "timed rounds; each runs the plain and the IRM update once, in rotating order", None, ge=1
    )
    precision: str | None = option("fp32 | bf16 (autocast)", None)
    compile: bool = option("torch.compile both arms (the plain model, the invariant model's body)", False)
    threads: int | None = option("torch CPU threads (default: torch's)", None, ge=1)
    seed: int = option("seed", 0)

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
    output_dir: str = option("where the demo writes", "results/demo/invariant_lm")
    nb_steps: int = option("updates", 30, ge=1)
    threads: int = option("torch CPU threads (1 is fastest for tiny models on a shared machine)", 1, ge=1)


# the sizes `reproduce --quick` uses: one seed, a smoke-sized run of the same code path (the tests run it)
QUICK = {"stage1_steps": 60, "stage2_steps": 24, "train_lines": 100, "test_lines": 40}
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")


@dataclass
class ReproduceConfig:
    output_dir: str = option("where results go", "results/invariant_lm")
    seeds: list[int] = option("seeds of stage 2 (each arm runs every seed)", None)
    quick: bool = option(
        "smoke-sized run of the same code path: the first seed only, "
        + ", ".join(f"{k} {v}" for k, v in QUICK.items()),
        False,
    )
    arms: list[str] = option("stage-2 arms: erm and irm (required by the claims), ensemble (optional)", None)
    n_noisy_envs: int = option(
        "noisy environments, each with its own noise token (plus one clean one)", 3, ge=1, le=10
    )
    noise_words: int = option(
        "words per noisy environment whose occurrences its noise token may replace", 5, ge=1
    )
    noise_rate: float = option(
        "probability that an occurrence of one of those words is replaced", 0.4, gt=0, le=1
    )
    data_seed: int = option("seed of the chain, the noise word sets and the text", 0)
    train_lines: int = option("sequences per training environment (and of the stage-1 corpus)", 3000, ge=1)
    test_lines: int = option("held-out sequences, clean and noisy each", 500, ge=1)
    hidden_size: int = option("hidden size of the tiny BERT (2 layers, 2 attention heads)", 64, ge=2)
    stage1_steps: int = option("stage-1 updates (clean MLM pretraining)", 6000, ge=1)
    stage1_lr: float = option("stage-1 learning rate", 1e-3, gt=0)
    stage2_steps: int = option("stage-2 updates per run (environment updates; whole rounds)", 1000, ge=1)
    stage2_lr: float = option("stage-2 learning rate (every arm)", 5e-4, gt=0)
    batch_size: int = option("batch size (sequences per update)", 32, ge=1)
    max_grad_norm: float = option(
        "stage 2: clip the norm of the stepped gradients at this value (<= 0: no clipping)", 1.0
    )
    lr_scheduler_type: str = option("stage-2 LR schedule: " + " | ".join(SCHEDULERS), "linear")
    warmup_steps: int = option("stage-2 LR warm-up updates", 0, ge=0)
    device: str = option("auto | cpu | cuda", "cpu")
    threads: int = option("torch CPU threads (1 is fastest for tiny models on a shared machine)", 1, ge=1)

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
