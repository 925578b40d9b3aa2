"""Config dataclasses of the `camels` subcommands. Defaults are the reference's (spec §9); names are the
reference's so `key=value` recipes translate."""

from __future__ import annotations

import dataclasses

from lmlab.config import check_bounds, option
from lmlab.training import TrainerOptions

DATASETS = ("streamingqa", "squad", "archivalqa", "synthetic")
WEIGHTINGS = ("CaMeLS", "uniform", "ssm", "TFIDF", "oracle")


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


FULL_PASSAGE_HELP = "archivalqa: the document is the full article (column ans_text), not ans_paragraph"


def validation_every(cfg) -> int:
    """Training batches between two validations: --val_check_interval (batches, Lightning's meaning) when set,
    else val_steps updates of accumulate_grad_batches batches each."""
    return cfg.val_check_interval or cfg.val_steps * cfg.accumulate_grad_batches


def validation_updates(cfg) -> int:
    """Validation runs between updates, so the interval in batches is rounded up to whole updates."""
    return -(-validation_every(cfg) // cfg.accumulate_grad_batches)


def _check_full_passage(cfg) -> None:
    if cfg.full_passage and cfg.dataset != "archivalqa":
        raise ValueError(f"--full_passage applies to --dataset archivalqa only, got --dataset {cfg.dataset}")


@dataclasses.dataclass
class QaPretrainConfig(TrainerOptions):
    """Fine-tune a causal LM on QA pairs in the reference prompt format (spec §6)."""

    dataset: str = option(
        "streamingqa | squad | archivalqa | synthetic (column layout of the files)", "streamingqa"
    )
    train_path: str = option(
        "QA pre-training table (CSV/JSON/parquet with the dataset's columns)", "data/qa_train.csv"
    )
    val_path: str = option("QA validation table", "data/qa_val.csv")
    model: str = option("causal LM: a hub name (online) or a local save_pretrained folder", "distilgpt2")
    tokenizer_name: str | None = option("tokenizer (default: the model's)", None)
    lr: float = option("Adam learning rate", 2.5e-5, gt=0)
    lt_batch_size: int = option("QA pairs per micro-batch", 32, ge=1)
    accumulate_grad_batches: int = option("micro-batches per update (reference: grad_acc_steps)", 2, ge=1)
    grad_clip_thresh: float = option("gradient-norm clip", 100.0, gt=0)
    val_steps: int = option(
        "validate every N updates (the reference's spelling; --val_check_interval, if set, decides)",
        512,
        ge=1,
    )
    val_max_pairs: int = option("at most this many validation pairs (greedy F1/EM and NLL)", 2048, ge=1)
    qa_eos: bool = option("append EOS to the answer", True)
    max_question_len: int = option("QA sequence length cap (question cut from the left)", 128, ge=2)
    documents: bool = option(
        "also train on the train file's distinct documents as plain LM examples, mixed with the QA pairs, so "
        "the model learns the facts of documents and the questions about them in one format",
        False,
    )
    max_text_len: int = option("document token cap (with --documents true)", 1024, ge=2)
    early_stop: bool = option("stop when validation NLL has not improved for stop_k validations", False)
    stop_k: int = option("early-stopping patience (validations)", 10, ge=1)
    max_steps: int = option("optimizer updates", 10000, ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("dataset", self.dataset, DATASETS)


@dataclasses.dataclass
class MetaTrainConfig(TrainerOptions):
    """Meta-train the CaMeLS weighting model (spec §3, §4)."""

    dataset: str = option("streamingqa | squad | archivalqa | synthetic", "streamingqa")
    train_path: str = option("meta-train rows (document, question, answer)", "data/train.csv")
    val_path: str = option("meta-validation rows", "data/val.csv")
    full_passage: bool = option(FULL_PASSAGE_HELP, False)
    loc_train_path: str | None = option(
        "locality texts for training (CSV column raw_text); null: no KL", "data/owt_train.csv"
    )
    loc_val_path: str | None = option("locality texts for validation", "data/owt_val.csv")
    base_model: str = option("the QA-tuned proxy base model (local folder or hub name)", "distilgpt2")
    base_model_state_dict: str | None = option(
        "optional state dict (.pt/.safetensors) loaded strictly into base_model", None
    )
    tokenizer_name: str | None = option("tokenizer (default: base_model's)", None)
    pretrained_model: str | None = option(
        "weighting-model encoder (folder or hub name); null: base_model's architecture, random init",
        "distilgpt2",
    )
    hidden: int = option("weighting-model head width", 128, ge=1)
    non_linearity: str = option("softplus (beta 3) | sigmoid | exp | gelu | none", "softplus")
    normalize: bool = option("rescale weights to mean 1 per document", False)
    freeze_base: bool = option("train only the weighting model's head", False)
    update_batch_size: int = option("documents per meta-step", 6, ge=1)
    sequential_update: bool = option("one inner SGD step per document (else one step on the batch)", True)
    num_inner_steps: int = option("passes of the inner loop with the same weights", 1, ge=1)
    inner_lr: float = option("inner SGD learning rate", 5e-4, gt=0)
    outer_lr: float = option("Adam learning rate of the weighting model", 1e-5, gt=0)
    accumulate_grad_batches: int = option(
        "meta-steps (batches) per weighting-model update (reference: grad_acc_steps)", 4, ge=1
    )
    reset_base_freq: int = option(
        "documents after which the base is reset to its start (multiple of update_batch_size; <= 1: every batch)",
        24,
        ge=0,
    )
    c_kl: float = option("weight of the locality KL", 0.1, ge=0)
    web_text_loc: bool = option("use the locality KL on loc texts", True)
    qa_loc: bool = option(
        "meta-train QA pairs as a second locality set (KL at answer-predicting positions only)", False
    )
    loc_batch_size: int = option("locality documents per meta-step", 1, ge=1)
    c_norm: float = option("weight of the (w-1) norm penalty", 0.0, ge=0)
    grad_clip_thresh: float = option("weighting-model gradient clip", 1e9, gt=0)
    reduce_lr_on_plateau: bool = option(
        "ReduceLROnPlateau (factor 0.7071, patience 5) on the validation total loss", False
    )
    max_text_len: int = option(
        "document token cap; also the loss denominator's length (loss_norm padded)", 1024, ge=2
    )
    max_question_len: int = option("QA sequence cap", 128, ge=2)
    meta_grad_mode: str = option(
        "unroll (full tape, reference) | adjoint (exact, one step's graph at a time)", "unroll"
    )
    adjoint_keep_last: int = option(
        "adjoint: the last n inner steps keep their graph from the forward pass (not recomputed)", 1, ge=0
    )
    loss_norm: str = option("padded (reference: B*(max_text_len-1)) | tokens | weights", "padded")
    inner_dropout: bool = option("base-model dropout on during the inner steps (reference)", True)
    log_metrics: str = option("cheap | full (extra forwards for text/qa gains)", "cheap")
    val_steps: int = option(
        "validate every N weighting-model updates, also before the first (the reference's spelling; "
        "--val_check_interval, if set, decides)",
        100,
        ge=1,
    )
    val_max_batches: int = option("at most this many validation batches", 64, ge=1)
    sample_steps: int | None = option(
        "write sample-weight pictures every N*grad_acc_steps batches (default val_steps)", None, ge=1
    )
    bm_learned_layers: int = option(
        "-1: all base parameters learn in the inner loop; n: the last n blocks + head", -1, ge=-1
    )
    max_steps: int = option(
        "weighting-model updates (the reference's 50 epochs were never reached: it crashed after epoch 0)",
        1000,
        ge=1,
    )
    precision: str = option("the tape runs in float32 (second-order terms in bf16 are noisy)", "32-true")
    compile: bool = option(
        "torch.compile the weighting model (in place; checkpoints keep their keys). The base model stays eager: "
        "its inner-loop tape needs double backward, which torch.compile lacks",
        False,
    )
    attn_implementation: str = option(
        "attention of the base and weighting models; eager by default: the inner-loop tape needs double "
        "backward, which fused SDPA and flash-attention kernels lack",
        "eager",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("dataset", self.dataset, DATASETS)
        _check_full_passage(self)
        _check_choice("meta_grad_mode", self.meta_grad_mode, ("unroll", "adjoint"))
        _check_choice("loss_norm", self.loss_norm, ("padded", "tokens", "weights"))
        _check_choice("non_linearity", self.non_linearity, ("softplus", "sigmoid", "exp", "gelu", "none"))
        _check_choice("log_metrics", self.log_metrics, ("cheap", "full"))
        if self.reset_base_freq > 1 and self.reset_base_freq % self.update_batch_size:
            raise ValueError(
                f"--reset_base_freq ({self.reset_base_freq}) must be a multiple of --update_batch_size ({self.update_batch_size})"
            )

    @property
    def grad_acc_steps(self) -> int:
        """The reference's name of accumulate_grad_batches, read by the meta-step (camels.meta)."""
        return self.accumulate_grad_batches


@dataclasses.dataclass
class EvalConfig:
    """Online adaptation on a document stream, then closed-book QA (spec §7)."""

    output_dir: str = option("where the CSV/JSON results and config.yaml go", "runs/eval")
    dataset: str = option("streamingqa | squad | archivalqa | synthetic", "streamingqa")
    test_path: str = option("the table the stream is built from (a val table for lr sweeps)", "data/test.csv")
    full_passage: bool = option(FULL_PASSAGE_HELP, False)
    downsample_to: int = option("documents in the stream (-1: all)", -1, ge=-1)
    seed: int = option("seed of the stream and of the run", 42)
    base_model: str = option("QA-tuned base model (folder or hub name)", "distilgpt2")
    base_model_state_dict: str | None = option("optional state dict loaded strictly into base_model", None)
    tokenizer_name: str | None = option("tokenizer (default: base_model's)", None)
    weight_model: str = option(
        "CaMeLS | uniform | ssm | TFIDF | oracle (weight 1 on the gold answers' tokens in their documents: a "
        "sanity reference that knows the questions)",
        "CaMeLS",
    )
    weight_model_path: str | None = option(
        "CaMeLS checkpoint (.pt from meta-train; required for CaMeLS)", None
    )
    init_scalar: float = option("uniform weight value", 1.0, ge=0)
    ssm_spacy_model: str = option(
        "spaCy pipeline for ssm (rule_based: offline entity-ruler pipeline)", "en_core_web_sm"
    )
    tfidf_path: str | None = option(
        "documents to fit TF-IDF on (default: all.csv beside test_path, else the stream)", None
    )
    min_threshold: float = option(
        "TF-IDF quantile cut-off (the README's thresholded recipe: 0.05)", 0.0, ge=0, le=1
    )
    lr: float = option("adaptation learning rate", 1e-4, ge=0)
    optimizer: str = option("adam | sgd | adafactor", "adam")
    grad_clip_thresh: float = option("gradient-norm clip", 750.0, gt=0)
    n_epochs: int = option("passes over the stream", 1, ge=1)
    grad_acc_steps: int = option("documents per optimizer step", 1, ge=1)
    max_text_len: int = option("document token cap and loss length", 1024, ge=2)
    loss_norm: str = option("padded | tokens | weights", "padded")
    eval: str = option("em | emK (K returned sequences, e.g. em4) | ppl", "em")
    generation_strategy: str = option("group_beam (reference) | beam | greedy", "group_beam")
    num_beams: int = option("beams", 12, ge=1)
    num_beam_groups: int = option("beam groups", 4, ge=1)
    diversity_penalty: float = option("Hamming diversity penalty", 10.0, ge=0)
    length_penalty: float = option("length penalty exponent", 1.0)
    max_new_tokens: int = option("answer length cap", 16, ge=1)
    generation_batch_size: int = option("questions per generation batch (left padded)", 1, ge=1)
    eval_init: bool = option("also evaluate before adaptation", False)
    eval_every_k: int = option(
        "-1: off; k: snapshot the base model every k documents, evaluate each after the stream", -1, ge=-1
    )
    unrelated_qa_eval: bool = option(
        "also evaluate the qa_val_path pairs before and after adaptation (forgetting)", False
    )
    qa_lt_final: bool = option("QA light-tune after adaptation (the uniform + QA-tune baseline)", False)
    qa_train_path: str | None = option("QA pairs for light-tuning", None)
    qa_val_path: str | None = option(
        "QA validation pairs (QA pre-training val split) for light-tuning and unrelated_qa_eval", None
    )
    lt_lr: float = option("light-tune lr", 2.5e-5, gt=0)
    lt_batch_size: int = option("light-tune batch", 16, ge=1)
    lt_grad_acc_steps: int = option("light-tune accumulation", 1, ge=1)
    lt_val_steps: int = option("light-tune validation interval (steps)", 16, ge=1)
    lt_steps: int = option("light-tune step cap", 1000000, ge=0)
    lt_stopping_metric: str = option("max_f1 | avg_f1 | exact_match | nll", "max_f1")
    lt_patience: int = option("light-tune patience (validations)", 3, ge=1)
    lt_early_stop: bool = option("early-stop light-tuning", True)
    device: str = option("auto | cpu | cuda", "auto")
    precision: str = option(
        "32-true | bf16-mixed (autocast for the first-order adaptation on GPU)", "32-true"
    )
    attn_implementation: str = option("sdpa | eager | flash_attention_2", "sdpa")
    overwrite: bool = option("overwrite a finished run in output_dir", False)
    checkpoint_every_n_docs: int = option(
        "save the adaptation state (model, optimizer, stream position) every N documents and after the "
        "stream, so an interrupted run resumes exactly (a multiple of grad_acc_steps; 0: never)",
        500,
        ge=0,
    )
    resume: str = option(
        "auto (from <output_dir>/checkpoints/last.ckpt if there) | never | PATH of an eval checkpoint", "auto"
    )
    progress_bar: bool = option("show progress bars", True)

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("weight_model", self.weight_model, WEIGHTINGS)
        _check_choice("optimizer", self.optimizer, ("adam", "sgd", "adafactor"))
        _check_choice("generation_strategy", self.generation_strategy, ("group_beam", "beam", "greedy"))
        _check_choice("loss_norm", self.loss_norm, ("padded", "tokens", "weights"))
        _check_choice("precision", self.precision, ("32-true", "bf16-mixed", "auto"))
        check_bounds(self)
        if not (self.eval in ("em", "ppl") or (self.eval.startswith("em") and self.eval[2:].isdigit())):
            raise ValueError(f"--eval must be em, emK (e.g. em4) or ppl, got {self.eval!r}")
        if self.weight_model == "CaMeLS" and not self.weight_model_path:
            raise ValueError("--weight_model_path is required with --weight_model CaMeLS")
        _check_full_passage(self)
        if self.eval_every_k == 0:
            raise ValueError("--eval_every_k must be -1 (off) or positive, got 0")
        if self.eval_every_k > 0 and self.eval_every_k % self.grad_acc_steps:
            raise ValueError(
                f"--eval_every_k ({self.eval_every_k}) must be a multiple of --grad_acc_steps ({self.grad_acc_steps}) so snapshots fall after optimizer steps"
            )
        if self.checkpoint_every_n_docs % self.grad_acc_steps:
            raise ValueError(
                f"--checkpoint_every_n_docs ({self.checkpoint_every_n_docs}) must be a multiple of --grad_acc_steps ({self.grad_acc_steps}) so checkpoints fall after optimizer steps"
            )
        if self.unrelated_qa_eval and not self.qa_val_path:
            raise ValueError(
                "--unrelated_qa_eval true needs --qa_val_path (the QA pre-training validation pairs)"
            )


@dataclasses.dataclass
class BenchConfig:
    """Meta-step time and peak memory (unroll padded, unroll, adjoint) in interleaved rounds; adaptation and
    generation speed. Every option left at 0 / auto / -1 takes the preset's value."""

    output_dir: str = option("writes bench.json and bench.md here", "results/camels")
    preset: str = option(
        "auto (gpu on CUDA, cpu otherwise) | toy (seconds, for tests) | cpu (CPU sizes, ~2 min on 2 cores) | "
        "gpu (issue 13's sizes: DistilGPT-2 shape, 6 x 1024 tokens; GPT-2 XL adaptation in bf16)",
        "auto",
    )
    device: str = option("auto (the preset's: cuda for gpu, cpu otherwise) | cpu | cuda", "auto")
    size: str = option("auto (the preset's) | distilgpt2 | cpu | tiny | toy: the meta-step's models", "auto")
    doc_len: int = option("document length (0: the preset's)", 0, ge=0)
    max_text_len: int = option("padded length of the reference mode (0: the preset's)", 0, ge=0)
    n_docs: int = option("inner documents, sequential steps (0: the preset's, 6 on cpu and gpu)", 0, ge=0)
    qa_len: int = option("QA sequence length (0: the preset's)", 0, ge=0)
    loc_len: int = option("locality document length (0: the preset's)", 0, ge=0)
    rounds: int = option(
        "timed rounds; each runs every mode once, in rotating order (0: the preset's)", 0, ge=0
    )
    warmup: int = option("untimed meta-steps of every mode before the rounds (-1: the preset's)", -1, ge=-1)
    eval_size: str = option(
        "auto (the preset's: gpt2-xl on gpu) | gpt2-xl | gpt2-large | distilgpt2 | tiny | toy", "auto"
    )
    eval_docs: int = option("documents for the adaptation timing (0: the preset's)", 0, ge=0)
    eval_questions: int = option("questions for the generation timing (0: the preset's)", 0, ge=0)
    dtype: str = option(
        "auto (the preset's) | float32 | bfloat16: adaptation/generation only; the tape stays float32", "auto"
    )
    modes: str = option("comma-separated meta-step modes", "unroll_padded,unroll,adjoint")
    adjoint_keep_last: int = option(
        "adjoint mode: inner steps whose graph is kept from the forward pass", 1, ge=0
    )
    compile: bool = option(
        "torch.compile the weighting model in every mode and the adaptation model (the base model's tape "
        "needs double backward, which torch.compile lacks)",
        False,
    )
    seed: int = option("seed", 0)

    def __post_init__(self) -> None:
        check_bounds(self)
        _check_choice("preset", self.preset, ("auto", "toy", "cpu", "gpu"))
        _check_choice("dtype", self.dtype, ("auto", "float32", "bfloat16"))
        _check_choice("device", self.device, ("auto", "cpu", "cuda"))
        sizes = ("auto", "toy", "tiny", "cpu", "distilgpt2", "gpt2-large", "gpt2-xl")
        _check_choice("size", self.size, sizes)
        _check_choice("eval_size", self.eval_size, sizes)


@dataclasses.dataclass
class SyntheticConfig:
    """Write the synthetic dataset (StreamingQA layout) used by the tests."""

    output_dir: str = option("folder for the CSVs", "data/synthetic")
    seed: int = option("seed", 0)
    n_qa: int = option("QA pre-training documents (2 questions each)", 400, ge=1)
    n_meta: int = option("meta-train documents", 160, ge=1)
    n_test: int = option("test-stream documents", 40, ge=1)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclasses.dataclass
class DemoConfig:
    """Tiny end-to-end run: `camels reproduce --quick true` into output_dir (one seed, tiny sizes; claims.json,
    report.md). A rerun skips finished run folders."""

    output_dir: str = option("where the claims, report, table and run folders go", "results/demo/camels")


@dataclasses.dataclass
class ReproduceConfig:
    """Controlled reproduction (issue 11): synthetic facts among Brown Corpus text, a tiny base pre-trained on
    documents and QA pairs, CaMeLS vs uniform / SSM / TF-IDF and the oracle, seeds 0, 1, 2; claims.json and
    report.md. A rerun skips finished run folders."""

    output_dir: str = option("where the claims, report, table and run folders go", "results/camels")
    quick: bool = option("one seed, tiny sizes, seconds (the test suite's run of the same code path)", False)
