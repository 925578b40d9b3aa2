"""Config dataclasses of the subcommands. Field names are the reference's JSON keys and flags, so the reference
configs (`--config gpt_headless_70m`) load unchanged; unknown keys are an error (as in the reference).

Batch sizes count *sequences of the model length* (`max_seq_len` for mlm, the packed row length for gpt).
One rule for the batch: `--global_bs` sets the accumulation (global_bs / (devices * num_nodes * gpu_bs), an
integer); `--accumulate_grad_batches`, when also given, must equal it (a conflict is a usage error), and with
`--global_bs none` it alone sets the accumulation.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.config import option
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


@dataclass
class _PretrainBase(TrainerOptions):
    # --- data and model
    dataset: str | None = option("preprocessed dataset folder (save_to_disk) or text file(s)", None)
    hf_tokenizer: str | None = option("tokenizer name or local folder", None)
    hf_path: str = option("architecture: shipped name, config.json or model folder", "pythia-70m")
    model_max_seq_len: int = option("model positions (max_position_embeddings)", 2048, ge=1)
    init_from: str | None = option(
        "start from these pretrained weights (model folder or hub name) instead of a fresh --hf_path", None
    )
    attn_implementation: str = option(
        "sdpa | eager | flash_attention_2 (GPU) | xformers (GPU); reference names hf, flash_attention", "sdpa"
    )
    accumulate_grad_batches: int | None = option(
        "micro-batches per optimizer step (default: set by --global_bs; must agree with it)", None, ge=1
    )
    run_name: str | None = option("run name (checkpoint sub-folder; default: output_dir name)", None)
    saved_ckpt_path: str | None = option("if set, output_dir = saved_ckpt_path/run_name", None)
    ckpt_every: int = option("keep a checkpoint forever every N steps (periodic/)", 10000, ge=1)
    num_workers: int = option("data-loader workers", 0, ge=0)
    global_bs: int | None = option("global batch in sequences (sets accumulation)", None, ge=1)
    gpu_bs: int = option("micro-batch per device in sequences: the in-batch negatives", 8, ge=1)
    # --- reference task-config keys
    text_key: str = option("column with the token ids (or text if not tokenized)", "packed")
    tokenized: bool = option("the dataset column holds token ids", True)
    emb_loss_weight: float = option("weight of the CWT loss (0: vanilla)", 1.0, ge=0)
    loss_name: str = option("contrastive loss (only cwt)", "cwt")
    learning_rate: float = option("peak learning rate", 1e-3, gt=0)
    schedule_type: str = option("cosine | constant | triangular (linear decay)", "cosine")
    contrastive_temperature: float = option("CWT temperature tau", 1.0, gt=0)
    warmup_steps: int = option("linear warm-up steps from 0", 1430, ge=0)
    min_lr_ratio: float = option("final LR / peak LR (reference 0; Pythia 0.1)", 0.0, ge=0, le=1)
    weight_decay: float = option("AdamW weight decay (never on biases and norms)", 0.1, ge=0)
    adam_betas: list[float] = option("AdamW betas", [0.9, 0.95])
    adam_eps: float = option("AdamW epsilon", 1e-8, gt=0)
    gradient_clip: float = option("gradient norm clipping", 1.0, ge=0)
    negatives: str = option("all (paper: duplicates kept) | unique (ablation)", "all")
    gather_negatives: bool = option(
        "DDP: negatives = all ranks' micro-batches (all-gather of K x d per step); off = paper", False
    )
    predictor: str = option("emb_predictor: identity | linear (D x D, ablation)", "identity")
    val_every: int | None = option(
        "validate every N optimizer steps (reference key; default 10% of the run)", None, ge=1
    )
    val_batches: int = option("validation batches per validation", 10, ge=1)
    valid_fraction: float = option(
        "validation share when the dataset has no validation split", 0.0001, ge=0, lt=1
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

    max_steps: int = option("total optimizer steps (reference key total_nb_steps)", 143000, ge=1)
    checkpoint_every_n_steps: int = option("rolling last.ckpt every N steps (--last_every)", 1000, ge=1)
    global_bs: int | None = option("global batch in sequences (sets accumulation)", 1024, ge=1)
    logger: str = option("tensorboard | csv | wandb | none", "tensorboard")
    lm_loss_weight: float = option("weight of the next-token CE (0: headless, head removed)", 1.0, ge=0)

    @property
    def ce_weight(self) -> float:
        return self.lm_loss_weight


@dataclass
class MlmConfig(_PretrainBase):
    """Masked (encoder) pre-training; defaults = the reference MLM task (BERT-base, triangular, 1M steps)."""

    hf_path: str = option("architecture: shipped name, config.json or model folder", "bert-base")
    model_max_seq_len: int = option("model positions (max_position_embeddings)", 128, ge=1)
    max_seq_len: int = option("MLM sequence length; longer packed rows are split", 128, ge=1)
    max_steps: int = option("total optimizer steps (reference key total_nb_steps)", 1_000_000, ge=1)
    checkpoint_every_n_steps: int = option("rolling last.ckpt every N steps (--last_every)", 1000, ge=1)
    global_bs: int | None = option("global batch in sequences of max_seq_len", 256, ge=1)
    gpu_bs: int = option("micro-batch per device in sequences of max_seq_len", 32, ge=1)
    logger: str = option("tensorboard | csv | wandb | none", "tensorboard")
    learning_rate: float = option("peak learning rate", 1e-4, gt=0)
    schedule_type: str = option("cosine | constant | triangular (linear decay)", "triangular")
    warmup_steps: int = option("linear warm-up steps from 0", 10000, ge=0)
    weight_decay: float = option("AdamW weight decay (never on biases and norms)", 0.01, ge=0)
    adam_betas: list[float] = option("AdamW betas", [0.9, 0.999])
    mlm_loss_weight: float = option("weight of the MLM CE (0: headless, head removed)", 1.0, ge=0)
    mask_prob: float = option("share of maskable positions selected per row", 0.15, ge=0, le=1)
    replace_prob: float = option("selected positions replaced by the mask token", 0.8, ge=0, le=1)
    random_token_prob: float = option("selected positions replaced by a random token", 0.1, ge=0, le=1)
    mask_scheme: str = option("bert (fixed) | reference (context noise, §1.4)", "bert")
    reference_label_bug: bool = option("reference scheme: labels from randomised input", False)
    mask_token_id: int | None = option("mask id when the tokenizer has none (reference: 1)", None, ge=0)
    mlm_vanilla_head: str = option("full (HF: logits at all positions) | sparse", "full")

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

    ckpt_path: str | None = option("headless checkpoint to start from (required)", None)
    mode: str = option("ft (train everything) | probe (train the head only)", "ft")
    emb_loss_weight: float = option("must stay 0: fine-tuning is CE only", 0.0, ge=0)
    max_steps: int = option("total optimizer steps (reference key total_nb_steps)", 10000, ge=1)
    learning_rate: float = option("peak learning rate", 1e-4, gt=0)
    ckpt_every: int = option("keep a checkpoint forever every N steps", 2500, ge=1)
    global_bs: int | None = option("global batch in sequences", 1024, ge=1)

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

    dataset_name: str | None = option("hub data set name (online only)", None)
    dataset_config: str | None = option("hub data set config", None)
    text_files: list[str] = option("local txt/jsonl/json/csv/parquet files or folders", [])
    text_column: str = option("text column of the input", "text")
    hf_tokenizer: str = option("tokenizer name or local folder", "EleutherAI/pythia-70m-deduped")
    output: str = option("output folder (save_to_disk)", "./dataset_storage/owt2_pythia.hf")
    max_seq_len: int = option("row length", 2048, ge=2)
    append_eos: bool = option(
        "EOS (SEP where the tokenizer has no EOS) after each document; false = reference", True
    )
    seed: int = option("shuffle seed", 0)
    val_fraction: float = option("share of rows in a validation split", 0.0, ge=0, lt=1)
    documents: str = option(
        "txt files: paragraph (blank-line separated documents) | line (one document per line)", "paragraph"
    )
    batch_docs: int = option("documents tokenised per batch", 100_000, ge=1)
    num_proc: int | None = option("processes for save_to_disk", None, ge=1)

    def __post_init__(self) -> None:
        if self.documents not in ("line", "paragraph"):
            raise ValueError("--documents must be line or paragraph")


@dataclass
class ExportConfig:
    model_ckpt: str = option("Lightning checkpoint of a gpt / mlm / ft-gpt run", "")
    mode: str = option("mlm | add_head | lm", "lm")
    output_dir: str = option("save_pretrained folder", "exported")
    hf_name: str | None = option("hub repo name for --push", None)
    push: bool = option("push to the hub (needs network and a token)", False)

    def __post_init__(self) -> None:
        if self.mode not in ("mlm", "add_head", "lm"):
            raise ValueError(f"--mode must be one of mlm, add_head, lm, got {self.mode!r}")
        if not self.model_ckpt:
            raise ValueError("--model_ckpt is required")
        if self.push and not self.hf_name:
            raise ValueError("--push needs --hf_name (the hub repository to push to)")


@dataclass
class BenchConfig:
    task: str = option("clm | mlm | loss | sweep | all", "all")
    preset: str = option(
        "sizes: toy (seconds, for tests) | cpu | gpu (issue 13 sizes) | auto (gpu on CUDA, else cpu)", "auto"
    )
    clm_arch: str | None = option("decoder architecture (default from the preset)", None)
    mlm_arch: str | None = option("encoder architecture (default from the preset)", None)
    vocab_size: int | None = option("vocabulary of the models (default from the preset)", None, ge=1)
    batch_size: int | None = option("micro-batch (default from the preset)", None, ge=1)
    seq_len: int | None = option("sequence length (default from the preset)", None, ge=2)
    mlm_vanilla: str = option("full | sparse | both (vanilla MLM baselines)", "both")
    loss_k: int | None = option("loss-only: predicted positions K", None, ge=1)
    loss_v: int | None = option("loss-only: vocabulary V", None, ge=1)
    loss_d: int | None = option("loss-only: hidden size D", None, ge=1)
    warmup_steps: int | None = option("untimed calls of every arm (default from the preset)", None, ge=0)
    rounds: int | None = option(
        "timed rounds, each arm once per round in rotating order (default from the preset)", None, ge=1
    )
    compile: bool = option("torch.compile the models of every arm (compiled vs compiled)", False)
    device: str = option("auto | cpu | cuda", "auto")
    precision: str = option("auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16", "auto")
    attn: str = option("attention backend: sdpa | hf | flash_attention | xformers", "sdpa")
    output_dir: str = option("writes bench.json and bench.md", "results/headless_lm")
    seed: int = option("seed", 0)

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
    """`demo` = `reproduce --quick` (one seed, tiny sizes, seconds) into --output_dir."""

    output_dir: str = option("where the demo writes", "results/demo/headless_lm")
    threads: int = option("torch threads (results repeat for a given count)", 1, ge=1)


@dataclass
class ReproduceConfig:
    """Headless vs vanilla on the Brown Corpus (see `headless_lm.reproduce`); `--quick` replaces the sizes by a
    one-seed, few-step run of the same code path (seconds)."""

    output_dir: str = option("where the reproduction writes", "results/headless_lm")
    quick: bool = option("one seed, tiny sizes, few steps (the test's run)", False)
    seeds: list[int] = option("seeds of every arm", [0, 1, 2])
    threads: int = option("torch threads (results repeat for a given count)", 1, ge=1)
    docs_per_genre: int | None = option(
        "use only the first N documents of each genre (default: all)", None, ge=2
    )
    holdout_every: int = option("hold out every N-th document of each genre", 5, ge=2)
    vocab_size: int = option("BPE vocabulary trained on the training paragraphs", 4096, ge=300)
    seq_len: int = option("packed row length (also the classifier's max length)", 64, ge=8)
    batch_size: int = option("pre-training micro-batch (= in-batch negatives)", 16, ge=1)
    hidden: int = option("model width", 128, ge=32)
    layers: int = option("model depth", 2, ge=1)
    learning_rate: float = option("pre-training and fine-tuning peak lr", 1e-3, gt=0)
    lm_steps: int = option("vanilla decoder steps (the compute budget)", 400, ge=2)
    ft_steps: int = option("headless decoder CE fine-tuning steps, inside the budget", 60, ge=1)
    cost_ratio: float = option(
        "measured vanilla step time / headless step time at these shapes (bench --task clm)", 2.08, gt=0
    )
    eval_rows: int = option("held-out packed rows scored for next-token accuracy", 500, ge=1)
    mlm_steps: int = option("encoder pre-training steps per arm", 300, ge=1)
    cls_train_rows: int = option("classifier training paragraphs", 2000, ge=2)
    cls_epochs: int = option("classifier epochs (best dev epoch kept)", 2, ge=1)
    cls_batch_size: int = option("classifier batch", 32, ge=1)
    cls_learning_rate: float = option("classifier fine-tuning lr", 3e-4, gt=0)
    bench_rounds: int = option("interleaved rounds of this run's own bench", 10, ge=1)

    def __post_init__(self) -> None:
        if self.ft_steps >= self.lm_steps:
            raise ValueError(f"--ft_steps {self.ft_steps} must be below --lm_steps {self.lm_steps}")
        if not self.seeds:
            raise ValueError("--seeds needs at least one seed")


@dataclass
class GlueConfig(TrainerOptions):
    """The GLUE protocol; the common flags apply to every (task, seed) run. `--max_steps` (when given) replaces
    `--epochs`; `--batch_size` is the micro-batch, so a step sees batch_size x accumulate_grad_batches rows."""

    model: str = option("exported encoder/decoder folder (export --mode mlm|lm) or hub name", "")
    tasks: list[str] = option("GLUE tasks", list(ALL_TASKS))
    seeds: list[int] = option(
        "fine-tuning seeds: run k uses --seed + seeds[k] (paper: 0 1 2 with --seed 0)", [0, 1, 2]
    )
    seed: int = option("base seed, added to each of --seeds", 0)
    devices: int | str = option(
        "1: each (task, seed) fine-tunes on one device (run tasks as separate commands)", 1
    )
    learning_rate: float = option("AdamW learning rate (regular-CE protocol: 5e-6)", 1e-5, gt=0)
    batch_size: int = option("micro-batch size", 32, ge=1)
    epochs: int = option("epochs; the best dev epoch is kept", 10, ge=1)
    max_steps: int | None = option(
        "optimizer steps per run (default: --epochs of the train split)", None, ge=1
    )
    val_check_interval: int | None = option(
        "score the dev set every N micro-batches (default: at the end of every epoch)", None, ge=1
    )
    warmup_ratio: float = option("linear warm-up share, then constant", 0.1, ge=0, le=1)
    weight_decay: float = option("AdamW weight decay (paper text/code: 0.01)", 0.0, ge=0)
    loss: str = option("balanced | ce", "balanced")
    max_seq_len: int = option("max tokens per example", 128, ge=1)
    data_dir: str = option("folder with <TASK>/train.tsv, dev.tsv", "glue_data")
    max_train_samples: int | None = option("cap on training rows (smoke tests)", None, ge=1)
    output_dir: str = option(
        "results.json, report.md, model/ and one folder per task and seed, resumed by a rerun", "runs/glue"
    )
    logger: str = option("csv | tensorboard | wandb | none (metrics.jsonl is always written)", "none")
    keep_checkpoints: bool = option(
        "keep each finished run's last.ckpt in its folder (else only the latest run's)", False
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
    model: str = option("exported causal model folder (export --mode add_head|lm)", "")
    data_file: str = option("jsonl with a text field, or a txt file (one passage a line)", "")
    batch_size: int = option("passages per forward pass", 8, ge=1)
    output: str | None = option("results JSON path", None)
    device: str = option("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        if not self.model or not self.data_file:
            raise ValueError("--model and --data_file are required")
