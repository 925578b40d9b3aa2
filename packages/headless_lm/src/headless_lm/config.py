"""Config dataclasses of the subcommands. Field names are the reference's JSON keys and flags, so the reference
configs (`--config gpt_headless_70m`) load unchanged; unknown keys are an error (as in the reference).

Batch sizes count *sequences of the model length* (`max_seq_len` for mlm, the packed row length for gpt).
One rule for the batch: `--global_bs` sets the accumulation (global_bs / (devices * num_nodes * gpu_bs), an
integer); `--accumulate_grad_batches`, when also given, must equal it (a conflict is a usage error), and with
`--global_bs none` it alone sets the accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.training import TrainerOptions

ATTENTION = {
    "hf": "eager",
    "eager": "eager",
    "sdpa": "sdpa",
    "flash_attention": "flash_attention_2",
    "flash_attention_2": "flash_attention_2",
    "xformers": "xformers",
}
ALL_TASKS = ("cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte")
SCHEDULES = ("cosine", "constant", "triangular", "linear")

# reference flag / key spellings -> our field names
PRETRAIN_ALIASES = {
    "total_nb_steps": "max_steps",
    "ckpt_path": "resume",
    "last_every": "checkpoint_every_n_steps",
    "accelerator": "attn_implementation",
}


def _h(text: str, **bounds: float) -> dict:
    """Field metadata: the help text and the declared range (gt, ge, lt, le), checked by lmlab.cli."""
    return {"help": text, **bounds}


@dataclass
class _PretrainBase(TrainerOptions):
    # --- data and model
    dataset: str | None = field(
        default=None, metadata=_h("preprocessed dataset folder (save_to_disk) or text file(s)")
    )
    hf_tokenizer: str | None = field(default=None, metadata=_h("tokenizer name or local folder"))
    hf_path: str = field(
        default="pythia-70m", metadata=_h("architecture: shipped name, config.json or model folder")
    )
    model_max_seq_len: int = field(
        default=2048, metadata=_h("model positions (max_position_embeddings)", ge=1)
    )
    init_from: str | None = field(
        default=None,
        metadata=_h(
            "start from these pretrained weights (model folder or hub name) instead of a fresh --hf_path"
        ),
    )
    attn_implementation: str = field(
        default="sdpa",
        metadata=_h(
            "sdpa | eager | flash_attention_2 (GPU) | xformers (GPU); reference names hf, flash_attention"
        ),
    )
    accumulate_grad_batches: int | None = field(
        default=None,
        metadata=_h(
            "micro-batches per optimizer step (default: set by --global_bs; must agree with it)", ge=1
        ),
    )
    run_name: str | None = field(
        default=None, metadata=_h("run name (checkpoint sub-folder; default: output_dir name)")
    )
    saved_ckpt_path: str | None = field(
        default=None, metadata=_h("if set, output_dir = saved_ckpt_path/run_name")
    )
    ckpt_every: int = field(
        default=10000, metadata=_h("keep a checkpoint forever every N steps (periodic/)", ge=1)
    )
    num_workers: int = field(default=0, metadata=_h("data-loader workers", ge=0))
    global_bs: int | None = field(
        default=None, metadata=_h("global batch in sequences (sets accumulation)", ge=1)
    )
    gpu_bs: int = field(
        default=8, metadata=_h("micro-batch per device in sequences: the in-batch negatives", ge=1)
    )
    # --- reference task-config keys
    text_key: str = field(
        default="packed", metadata=_h("column with the token ids (or text if not tokenized)")
    )
    tokenized: bool = field(default=True, metadata=_h("the dataset column holds token ids"))
    emb_loss_weight: float = field(default=1.0, metadata=_h("weight of the CWT loss (0: vanilla)", ge=0))
    loss_name: str = field(default="cwt", metadata=_h("contrastive loss (only cwt)"))
    learning_rate: float = field(default=1e-3, metadata=_h("peak learning rate", gt=0))
    schedule_type: str = field(default="cosine", metadata=_h("cosine | constant | triangular (linear decay)"))
    contrastive_temperature: float = field(default=1.0, metadata=_h("CWT temperature tau", gt=0))
    warmup_steps: int = field(default=1430, metadata=_h("linear warm-up steps from 0", ge=0))
    min_lr_ratio: float = field(
        default=0.0, metadata=_h("final LR / peak LR (reference 0; Pythia 0.1)", ge=0, le=1)
    )
    weight_decay: float = field(
        default=0.1, metadata=_h("AdamW weight decay (never on biases and norms)", ge=0)
    )
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.95], metadata=_h("AdamW betas"))
    adam_eps: float = field(default=1e-8, metadata=_h("AdamW epsilon", gt=0))
    gradient_clip: float = field(default=1.0, metadata=_h("gradient norm clipping", ge=0))
    negatives: str = field(default="all", metadata=_h("all (paper: duplicates kept) | unique (ablation)"))
    gather_negatives: bool = field(
        default=False,
        metadata=_h("DDP: negatives = all ranks' micro-batches (all-gather of K x d per step); off = paper"),
    )
    predictor: str = field(
        default="identity", metadata=_h("emb_predictor: identity | linear (D x D, ablation)")
    )
    val_every: int | None = field(
        default=None,
        metadata=_h("validate every N optimizer steps (reference key; default 10% of the run)", ge=1),
    )
    val_batches: int = field(default=10, metadata=_h("validation batches per validation", ge=1))
    valid_fraction: float = field(
        default=0.0001, metadata=_h("validation share when the dataset has no validation split", ge=0, lt=1)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attn_implementation not in ATTENTION:
            raise ValueError(
                f"--attn_implementation must be one of {', '.join(ATTENTION)}, got {self.attn_implementation!r}"
            )
        self.attn_implementation = ATTENTION[self.attn_implementation]
        if self.val_every is not None and self.val_check_interval is not None:
            raise ValueError(
                f"--val_every {self.val_every} (optimizer steps) and --val_check_interval {self.val_check_interval} "
                "(micro-batches) set the same thing; give one"
            )
        if self.global_bs is not None and self.global_bs < self.gpu_bs:
            raise ValueError("--global_bs must be at least --gpu_bs")
        implied = self.accumulation()  # checks that --global_bs splits into whole micro-batches
        if self.accumulate_grad_batches is not None and implied != self.accumulate_grad_batches:
            world = world_size(self.devices, self.num_nodes, self.device)
            raise ValueError(
                f"--accumulate_grad_batches {self.accumulate_grad_batches} disagrees with --global_bs "
                f"{self.global_bs} (= {implied} x {world} devices x --gpu_bs {self.gpu_bs}); give one of them "
                "(--global_bs none lets --accumulate_grad_batches set the batch)"
            )
        if self.schedule_type not in SCHEDULES:
            raise ValueError(
                f"--schedule_type must be one of {', '.join(SCHEDULES)}, got {self.schedule_type!r}"
            )
        if self.loss_name != "cwt":
            raise ValueError(f"--loss_name must be cwt, got {self.loss_name!r}")
        if self.negatives not in ("all", "unique"):
            raise ValueError(f"--negatives must be all or unique, got {self.negatives!r}")
        if self.gather_negatives and self.emb_loss_weight == 0:
            raise ValueError(
                "--gather_negatives only changes the CWT loss: set --emb_loss_weight > 0 or drop it"
            )
        if self.predictor not in ("identity", "linear"):
            raise ValueError(f"--predictor must be identity or linear, got {self.predictor!r}")
        if len(self.adam_betas) != 2:
            raise ValueError("--adam_betas must be two numbers")

    @property
    def ce_weight(self) -> float:
        raise NotImplementedError

    def accumulation(self) -> int:
        """Micro-batches per optimizer step: global_bs / (devices * nodes * gpu_bs), which must be an integer, or
        --accumulate_grad_batches (1 when neither is given)."""
        if self.global_bs is None:
            return self.accumulate_grad_batches or 1
        per_step = world_size(self.devices, self.num_nodes, self.device) * self.gpu_bs
        if self.global_bs % per_step:
            raise ValueError(
                f"--global_bs {self.global_bs} is not a multiple of devices*nodes*gpu_bs = {per_step}; "
                "change one of them"
            )
        return self.global_bs // per_step


def world_size(devices: int | str, num_nodes: int, device: str) -> int:
    """Processes of a run: devices per node (an int, a list, -1 or auto: every visible GPU, else 1) x nodes."""
    text = str(devices).strip()
    if text.startswith("[") or "," in text:
        n = len([d for d in text.strip("[]").split(",") if d.strip()])
    elif text.lstrip("-").isdigit() and int(text) != -1:
        n = int(text)
    else:  # auto or -1: every visible GPU when training on them
        import torch

        n = torch.cuda.device_count() if device in ("auto", "gpu", "cuda") else 1
    return max(1, n) * num_nodes


@dataclass
class GptConfig(_PretrainBase):
    """Causal (decoder) pre-training; defaults = the reference task defaults (Pythia-70m, 143k steps)."""

    max_steps: int = field(
        default=143000, metadata=_h("total optimizer steps (reference key total_nb_steps)", ge=1)
    )
    checkpoint_every_n_steps: int = field(
        default=1000, metadata=_h("rolling last.ckpt every N steps (--last_every)", ge=1)
    )
    global_bs: int | None = field(
        default=1024, metadata=_h("global batch in sequences (sets accumulation)", ge=1)
    )
    logger: str = field(default="tensorboard", metadata=_h("tensorboard | csv | wandb | none"))
    lm_loss_weight: float = field(
        default=1.0, metadata=_h("weight of the next-token CE (0: headless, head removed)", ge=0)
    )

    @property
    def ce_weight(self) -> float:
        return self.lm_loss_weight


@dataclass
class MlmConfig(_PretrainBase):
    """Masked (encoder) pre-training; defaults = the reference MLM task (BERT-base, triangular, 1M steps)."""

    hf_path: str = field(
        default="bert-base", metadata=_h("architecture: shipped name, config.json or model folder")
    )
    model_max_seq_len: int = field(
        default=128, metadata=_h("model positions (max_position_embeddings)", ge=1)
    )
    max_seq_len: int = field(
        default=128, metadata=_h("MLM sequence length; longer packed rows are split", ge=1)
    )
    max_steps: int = field(
        default=1_000_000, metadata=_h("total optimizer steps (reference key total_nb_steps)", ge=1)
    )
    checkpoint_every_n_steps: int = field(
        default=1000, metadata=_h("rolling last.ckpt every N steps (--last_every)", ge=1)
    )
    global_bs: int | None = field(default=256, metadata=_h("global batch in sequences of max_seq_len", ge=1))
    gpu_bs: int = field(default=32, metadata=_h("micro-batch per device in sequences of max_seq_len", ge=1))
    logger: str = field(default="tensorboard", metadata=_h("tensorboard | csv | wandb | none"))
    learning_rate: float = field(default=1e-4, metadata=_h("peak learning rate", gt=0))
    schedule_type: str = field(
        default="triangular", metadata=_h("cosine | constant | triangular (linear decay)")
    )
    warmup_steps: int = field(default=10000, metadata=_h("linear warm-up steps from 0", ge=0))
    weight_decay: float = field(
        default=0.01, metadata=_h("AdamW weight decay (never on biases and norms)", ge=0)
    )
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999], metadata=_h("AdamW betas"))
    mlm_loss_weight: float = field(
        default=1.0, metadata=_h("weight of the MLM CE (0: headless, head removed)", ge=0)
    )
    mask_prob: float = field(
        default=0.15, metadata=_h("share of maskable positions selected per row", ge=0, le=1)
    )
    replace_prob: float = field(
        default=0.8, metadata=_h("selected positions replaced by the mask token", ge=0, le=1)
    )
    random_token_prob: float = field(
        default=0.1, metadata=_h("selected positions replaced by a random token", ge=0, le=1)
    )
    mask_scheme: str = field(default="bert", metadata=_h("bert (fixed) | reference (context noise, §1.4)"))
    reference_label_bug: bool = field(
        default=False, metadata=_h("reference scheme: labels from randomised input")
    )
    mask_token_id: int | None = field(
        default=None, metadata=_h("mask id when the tokenizer has none (reference: 1)", ge=0)
    )
    mlm_vanilla_head: str = field(default="full", metadata=_h("full (HF: logits at all positions) | sparse"))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mask_scheme not in ("bert", "reference"):
            raise ValueError(f"--mask_scheme must be bert or reference, got {self.mask_scheme!r}")
        if self.mlm_vanilla_head not in ("full", "sparse"):
            raise ValueError("--mlm_vanilla_head must be full or sparse")
        if self.max_seq_len > self.model_max_seq_len:
            raise ValueError(
                f"--max_seq_len {self.max_seq_len} is longer than --model_max_seq_len {self.model_max_seq_len}"
            )

    @property
    def ce_weight(self) -> float:
        return self.mlm_loss_weight


@dataclass
class FtGptConfig(GptConfig):
    """Fine-tuning of a headless decoder with a head copied from its input embeddings (CE only)."""

    ckpt_path: str | None = field(default=None, metadata=_h("headless checkpoint to start from (required)"))
    mode: str = field(default="ft", metadata=_h("ft (train everything) | probe (train the head only)"))
    emb_loss_weight: float = field(default=0.0, metadata=_h("must stay 0: fine-tuning is CE only", ge=0))
    max_steps: int = field(
        default=10000, metadata=_h("total optimizer steps (reference key total_nb_steps)", ge=1)
    )
    learning_rate: float = field(default=1e-4, metadata=_h("peak learning rate", gt=0))
    ckpt_every: int = field(default=2500, metadata=_h("keep a checkpoint forever every N steps", ge=1))
    global_bs: int | None = field(default=1024, metadata=_h("global batch in sequences", ge=1))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in ("ft", "probe"):
            raise ValueError(f"--mode must be ft or probe, got {self.mode!r}")
        if self.lm_loss_weight == 0:
            raise ValueError("--lm_loss_weight must be non-zero for ft-gpt")
        if self.emb_loss_weight != 0:
            raise ValueError("ft-gpt trains with CE only: --emb_loss_weight must be 0")
        if self.init_from is not None:
            raise ValueError("ft-gpt starts from --ckpt_path (a headless checkpoint); drop --init_from")


FT_ALIASES = {
    "total_nb_steps": "max_steps",
    "last_every": "checkpoint_every_n_steps",
    "accelerator": "attn_implementation",
}


@dataclass
class PreprocessConfig:
    """Tokenise a corpus, pack it into rows of exactly max_seq_len tokens, save it with save_to_disk."""

    dataset_name: str | None = field(default=None, metadata=_h("hub data set name (online only)"))
    dataset_config: str | None = field(default=None, metadata=_h("hub data set config"))
    text_files: list[str] = field(
        default_factory=list, metadata=_h("local txt/jsonl/json/csv/parquet files or folders")
    )
    text_column: str = field(default="text", metadata=_h("text column of the input"))
    hf_tokenizer: str = field(
        default="EleutherAI/pythia-70m-deduped", metadata=_h("tokenizer name or local folder")
    )
    output: str = field(
        default="./dataset_storage/owt2_pythia.hf", metadata=_h("output folder (save_to_disk)")
    )
    max_seq_len: int = field(default=2048, metadata=_h("row length", ge=2))
    append_eos: bool = field(
        default=True,
        metadata=_h("EOS (SEP where the tokenizer has no EOS) after each document; false = reference"),
    )
    seed: int = field(default=0, metadata=_h("shuffle seed"))
    val_fraction: float = field(default=0.0, metadata=_h("share of rows in a validation split", ge=0, lt=1))
    documents: str = field(
        default="paragraph",
        metadata=_h("txt files: paragraph (blank-line separated documents) | line (one document per line)"),
    )
    batch_docs: int = field(default=100_000, metadata=_h("documents tokenised per batch", ge=1))
    num_proc: int | None = field(default=None, metadata=_h("processes for save_to_disk", ge=1))

    def __post_init__(self) -> None:
        if self.documents not in ("line", "paragraph"):
            raise ValueError("--documents must be line or paragraph")


@dataclass
class ExportConfig:
    model_ckpt: str = field(default="", metadata=_h("Lightning checkpoint of a gpt / mlm / ft-gpt run"))
    mode: str = field(default="lm", metadata=_h("mlm | add_head | lm"))
    output_dir: str = field(default="exported", metadata=_h("save_pretrained folder"))
    hf_name: str | None = field(default=None, metadata=_h("hub repo name for --push"))
    push: bool = field(default=False, metadata=_h("push to the hub (needs network and a token)"))

    def __post_init__(self) -> None:
        if self.mode not in ("mlm", "add_head", "lm"):
            raise ValueError(f"--mode must be one of mlm, add_head, lm, got {self.mode!r}")
        if not self.model_ckpt:
            raise ValueError("--model_ckpt is required")
        if self.push and not self.hf_name:
            raise ValueError("--push needs --hf_name (the hub repository to push to)")


@dataclass
class BenchConfig:
    task: str = field(default="all", metadata={"help": "clm | mlm | loss | sweep | all"})
    preset: str = field(
        default="auto",
        metadata={
            "help": "sizes: toy (seconds, for tests) | cpu | gpu (issue 13 sizes) | auto (gpu on CUDA, else cpu)"
        },
    )
    clm_arch: str | None = field(
        default=None, metadata={"help": "decoder architecture (default from the preset)"}
    )
    mlm_arch: str | None = field(
        default=None, metadata={"help": "encoder architecture (default from the preset)"}
    )
    vocab_size: int | None = field(
        default=None, metadata={"help": "vocabulary of the models (default from the preset)", "ge": 1}
    )
    batch_size: int | None = field(
        default=None, metadata={"help": "micro-batch (default from the preset)", "ge": 1}
    )
    seq_len: int | None = field(
        default=None, metadata={"help": "sequence length (default from the preset)", "ge": 2}
    )
    mlm_vanilla: str = field(
        default="both", metadata={"help": "full | sparse | both (vanilla MLM baselines)"}
    )
    loss_k: int | None = field(default=None, metadata={"help": "loss-only: predicted positions K", "ge": 1})
    loss_v: int | None = field(default=None, metadata={"help": "loss-only: vocabulary V", "ge": 1})
    loss_d: int | None = field(default=None, metadata={"help": "loss-only: hidden size D", "ge": 1})
    warmup_steps: int | None = field(
        default=None, metadata={"help": "untimed calls of every arm (default from the preset)", "ge": 0}
    )
    rounds: int | None = field(
        default=None,
        metadata={
            "help": "timed rounds, each arm once per round in rotating order (default from the preset)",
            "ge": 1,
        },
    )
    compile: bool = field(
        default=False, metadata={"help": "torch.compile the models of every arm (compiled vs compiled)"}
    )
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16"}
    )
    attn: str = field(
        default="sdpa", metadata={"help": "attention backend: sdpa | hf | flash_attention | xformers"}
    )
    output_dir: str = field(
        default="results/headless_lm", metadata={"help": "writes bench.json and bench.md"}
    )
    seed: int = field(default=0, metadata={"help": "seed"})

    def __post_init__(self) -> None:
        if self.task not in ("clm", "mlm", "loss", "sweep", "all"):
            raise ValueError("--task must be clm, mlm, loss, sweep or all")
        if self.preset not in ("auto", "toy", "cpu", "gpu"):
            raise ValueError("--preset must be auto, toy, cpu or gpu")
        if self.mlm_vanilla not in ("full", "sparse", "both"):
            raise ValueError("--mlm_vanilla must be full, sparse or both")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError("--precision must be auto, fp32 or bf16")


@dataclass
class DemoConfig:
    output_dir: str = field(default="results/demo/headless_lm", metadata={"help": "where the demo writes"})
    steps: int = field(default=40, metadata={"help": "pre-training steps per model", "ge": 1})
    ft_steps: int = field(default=10, metadata={"help": "fine-tuning steps of the headless decoder", "ge": 1})
    vocab_size: int = field(default=1000, metadata={"help": "BPE vocabulary trained on the sample", "ge": 1})
    seq_len: int = field(default=64, metadata={"help": "packed row length", "ge": 1})
    batch_size: int = field(default=8, metadata={"help": "micro-batch (= in-batch negatives)", "ge": 1})
    hidden: int = field(default=64, metadata={"help": "model width", "ge": 1})
    layers: int = field(default=2, metadata={"help": "model depth", "ge": 1})
    mlm: bool = field(
        default=False, metadata={"help": "also pre-train vanilla and headless encoders + GLUE sample"}
    )
    bench: bool = field(default=False, metadata={"help": "also run the CPU benchmark"})
    seed: int = field(default=0, metadata={"help": "seed"})


@dataclass
class ReproduceConfig:
    """Headless vs vanilla on the Brown Corpus (see `headless_lm.reproduce`); `--quick` replaces the sizes by a
    one-seed, few-step run of the same code path (seconds)."""

    output_dir: str = field(default="results/headless_lm", metadata={"help": "where the reproduction writes"})
    quick: bool = field(default=False, metadata={"help": "one seed, tiny sizes, few steps (the test's run)"})
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "seeds of every arm"})
    threads: int = field(
        default=1, metadata={"help": "torch threads (results repeat for a given count)", "ge": 1}
    )
    docs_per_genre: int | None = field(
        default=None,
        metadata={"help": "use only the first N documents of each genre (default: all)", "ge": 2},
    )
    holdout_every: int = field(
        default=5, metadata={"help": "hold out every N-th document of each genre", "ge": 2}
    )
    vocab_size: int = field(
        default=4096, metadata={"help": "BPE vocabulary trained on the training paragraphs", "ge": 300}
    )
    seq_len: int = field(
        default=64, metadata={"help": "packed row length (also the classifier's max length)", "ge": 8}
    )
    batch_size: int = field(
        default=16, metadata={"help": "pre-training micro-batch (= in-batch negatives)", "ge": 1}
    )
    hidden: int = field(default=128, metadata={"help": "model width", "ge": 32})
    layers: int = field(default=2, metadata={"help": "model depth", "ge": 1})
    learning_rate: float = field(
        default=1e-3, metadata={"help": "pre-training and fine-tuning peak lr", "gt": 0}
    )
    lm_steps: int = field(
        default=400, metadata={"help": "vanilla decoder steps (the compute budget)", "ge": 2}
    )
    ft_steps: int = field(
        default=60, metadata={"help": "headless decoder CE fine-tuning steps, inside the budget", "ge": 1}
    )
    cost_ratio: float = field(
        default=2.08,
        metadata={
            "help": "measured vanilla step time / headless step time at these shapes (bench --task clm)",
            "gt": 0,
        },
    )
    eval_rows: int = field(
        default=500, metadata={"help": "held-out packed rows scored for next-token accuracy", "ge": 1}
    )
    mlm_steps: int = field(default=300, metadata={"help": "encoder pre-training steps per arm", "ge": 1})
    cls_train_rows: int = field(default=2000, metadata={"help": "classifier training paragraphs", "ge": 2})
    cls_epochs: int = field(default=2, metadata={"help": "classifier epochs (best dev epoch kept)", "ge": 1})
    cls_batch_size: int = field(default=32, metadata={"help": "classifier batch", "ge": 1})
    cls_learning_rate: float = field(default=3e-4, metadata={"help": "classifier fine-tuning lr", "gt": 0})
    bench_rounds: int = field(
        default=10, metadata={"help": "interleaved rounds of this run's own bench", "ge": 1}
    )

    def __post_init__(self) -> None:
        if self.ft_steps >= self.lm_steps:
            raise ValueError(f"--ft_steps {self.ft_steps} must be below --lm_steps {self.lm_steps}")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")


@dataclass
class GlueConfig(TrainerOptions):
    """The GLUE protocol; the common flags apply to every (task, seed) run. `--max_steps` (when given) replaces
    `--epochs`; `--batch_size` is the micro-batch, so a step sees batch_size x accumulate_grad_batches rows."""

    model: str = field(
        default="", metadata={"help": "exported encoder/decoder folder (export --mode mlm|lm) or hub name"}
    )
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS), metadata={"help": "GLUE tasks"})
    seeds: list[int] = field(
        default_factory=lambda: [0, 1, 2],
        metadata={"help": "fine-tuning seeds: run k uses --seed + seeds[k] (paper: 0 1 2 with --seed 0)"},
    )
    seed: int = field(default=0, metadata={"help": "base seed, added to each of --seeds"})
    devices: int | str = field(
        default=1,
        metadata={"help": "1: each (task, seed) fine-tunes on one device (run tasks as separate commands)"},
    )
    learning_rate: float = field(
        default=1e-5, metadata={"help": "AdamW learning rate (regular-CE protocol: 5e-6)", "gt": 0}
    )
    batch_size: int = field(default=32, metadata={"help": "micro-batch size", "ge": 1})
    epochs: int = field(default=10, metadata={"help": "epochs; the best dev epoch is kept", "ge": 1})
    max_steps: int | None = field(
        default=None,
        metadata={"help": "optimizer steps per run (default: --epochs of the train split)", "ge": 1},
    )
    val_check_interval: int | None = field(
        default=None,
        metadata={
            "help": "score the dev set every N micro-batches (default: at the end of every epoch)",
            "ge": 1,
        },
    )
    warmup_ratio: float = field(
        default=0.1, metadata={"help": "linear warm-up share, then constant", "ge": 0, "le": 1}
    )
    weight_decay: float = field(
        default=0.0, metadata={"help": "AdamW weight decay (paper text/code: 0.01)", "ge": 0}
    )
    loss: str = field(default="balanced", metadata={"help": "balanced | ce"})
    max_seq_len: int = field(default=128, metadata={"help": "max tokens per example", "ge": 1})
    data_dir: str = field(default="glue_data", metadata={"help": "folder with <TASK>/train.tsv, dev.tsv"})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "cap on training rows (smoke tests)", "ge": 1}
    )
    output_dir: str = field(
        default="runs/glue",
        metadata={
            "help": "results.json, report.md, model/ and one folder per task and seed, resumed by a rerun"
        },
    )
    logger: str = field(
        default="none",
        metadata={"help": "csv | tensorboard | wandb | none (metrics.jsonl is always written)"},
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={"help": "keep each finished run's last.ckpt in its folder (else only the latest run's)"},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.model:
            raise ValueError("--model is required")
        if self.loss not in ("balanced", "ce"):
            raise ValueError("--loss must be balanced or ce")
        if not self.tasks or not self.seeds:
            raise ValueError("--tasks and --seeds need at least one value each")


@dataclass
class LambadaConfig:
    model: str = field(
        default="", metadata={"help": "exported causal model folder (export --mode add_head|lm)"}
    )
    data_file: str = field(
        default="", metadata={"help": "jsonl with a text field, or a txt file (one passage a line)"}
    )
    batch_size: int = field(default=8, metadata={"help": "passages per forward pass", "ge": 1})
    output: str | None = field(default=None, metadata={"help": "results JSON path"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda"})

    def __post_init__(self) -> None:
        if not self.model or not self.data_file:
            raise ValueError("--model and --data_file are required")
