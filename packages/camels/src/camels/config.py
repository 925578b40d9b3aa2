"""Config dataclasses of the `camels` subcommands. Defaults are the reference's (spec §9); names are the
reference's so `key=value` recipes translate."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from lmlab.config import check_bounds
from lmlab.training import TrainerOptions

DATASETS = ("streamingqa", "squad", "archivalqa", "synthetic")
WEIGHTINGS = ("CaMeLS", "uniform", "ssm", "TFIDF", "oracle")


def _help(default, text, **bounds):
    """A field with its help text and its range (gt, ge, lt, le), checked by lmlab's check_bounds."""
    return field(default=default, metadata={"help": text, **bounds})


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

    dataset: str = _help(
        "streamingqa", "streamingqa | squad | archivalqa | synthetic (column layout of the files)"
    )
    train_path: str = _help(
        "data/qa_train.csv", "QA pre-training table (CSV/JSON/parquet with the dataset's columns)"
    )
    val_path: str = _help("data/qa_val.csv", "QA validation table")
    model: str = _help("distilgpt2", "causal LM: a hub name (online) or a local save_pretrained folder")
    tokenizer_name: str | None = _help(None, "tokenizer (default: the model's)")
    lr: float = _help(2.5e-5, "Adam learning rate", gt=0)
    lt_batch_size: int = _help(32, "QA pairs per micro-batch", ge=1)
    accumulate_grad_batches: int = _help(2, "micro-batches per update (reference: grad_acc_steps)", ge=1)
    grad_clip_thresh: float = _help(100.0, "gradient-norm clip", gt=0)
    val_steps: int = _help(
        512,
        "validate every N updates (the reference's spelling; --val_check_interval, if set, decides)",
        ge=1,
    )
    val_max_pairs: int = _help(2048, "at most this many validation pairs (greedy F1/EM and NLL)", ge=1)
    qa_eos: bool = _help(True, "append EOS to the answer")
    max_question_len: int = _help(128, "QA sequence length cap (question cut from the left)", ge=2)
    documents: bool = _help(
        False,
        "also train on the train file's distinct documents as plain LM examples, mixed with the QA pairs, so "
        "the model learns the facts of documents and the questions about them in one format",
    )
    max_text_len: int = _help(1024, "document token cap (with --documents true)", ge=2)
    early_stop: bool = _help(False, "stop when validation NLL has not improved for stop_k validations")
    stop_k: int = _help(10, "early-stopping patience (validations)", ge=1)
    max_steps: int = _help(10000, "optimizer updates", ge=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("dataset", self.dataset, DATASETS)


@dataclasses.dataclass
class MetaTrainConfig(TrainerOptions):
    """Meta-train the CaMeLS weighting model (spec §3, §4)."""

    dataset: str = _help("streamingqa", "streamingqa | squad | archivalqa | synthetic")
    train_path: str = _help("data/train.csv", "meta-train rows (document, question, answer)")
    val_path: str = _help("data/val.csv", "meta-validation rows")
    full_passage: bool = _help(False, FULL_PASSAGE_HELP)
    loc_train_path: str | None = _help(
        "data/owt_train.csv", "locality texts for training (CSV column raw_text); null: no KL"
    )
    loc_val_path: str | None = _help("data/owt_val.csv", "locality texts for validation")
    base_model: str = _help("distilgpt2", "the QA-tuned proxy base model (local folder or hub name)")
    base_model_state_dict: str | None = _help(
        None, "optional state dict (.pt/.safetensors) loaded strictly into base_model"
    )
    tokenizer_name: str | None = _help(None, "tokenizer (default: base_model's)")
    pretrained_model: str | None = _help(
        "distilgpt2",
        "weighting-model encoder (folder or hub name); null: base_model's architecture, random init",
    )
    hidden: int = _help(128, "weighting-model head width", ge=1)
    non_linearity: str = _help("softplus", "softplus (beta 3) | sigmoid | exp | gelu | none")
    normalize: bool = _help(False, "rescale weights to mean 1 per document")
    freeze_base: bool = _help(False, "train only the weighting model's head")
    update_batch_size: int = _help(6, "documents per meta-step", ge=1)
    sequential_update: bool = _help(True, "one inner SGD step per document (else one step on the batch)")
    num_inner_steps: int = _help(1, "passes of the inner loop with the same weights", ge=1)
    inner_lr: float = _help(5e-4, "inner SGD learning rate", gt=0)
    outer_lr: float = _help(1e-5, "Adam learning rate of the weighting model", gt=0)
    accumulate_grad_batches: int = _help(
        4, "meta-steps (batches) per weighting-model update (reference: grad_acc_steps)", ge=1
    )
    reset_base_freq: int = _help(
        24,
        "documents after which the base is reset to its start (multiple of update_batch_size; <= 1: every batch)",
        ge=0,
    )
    c_kl: float = _help(0.1, "weight of the locality KL", ge=0)
    web_text_loc: bool = _help(True, "use the locality KL on loc texts")
    qa_loc: bool = _help(
        False, "meta-train QA pairs as a second locality set (KL at answer-predicting positions only)"
    )
    loc_batch_size: int = _help(1, "locality documents per meta-step", ge=1)
    c_norm: float = _help(0.0, "weight of the (w-1) norm penalty", ge=0)
    grad_clip_thresh: float = _help(1e9, "weighting-model gradient clip", gt=0)
    reduce_lr_on_plateau: bool = _help(
        False, "ReduceLROnPlateau (factor 0.7071, patience 5) on the validation total loss"
    )
    max_text_len: int = _help(
        1024, "document token cap; also the loss denominator's length (loss_norm padded)", ge=2
    )
    max_question_len: int = _help(128, "QA sequence cap", ge=2)
    meta_grad_mode: str = _help(
        "unroll", "unroll (full tape, reference) | adjoint (exact, one step's graph at a time)"
    )
    adjoint_keep_last: int = _help(
        1, "adjoint: the last n inner steps keep their graph from the forward pass (not recomputed)", ge=0
    )
    loss_norm: str = _help("padded", "padded (reference: B*(max_text_len-1)) | tokens | weights")
    inner_dropout: bool = _help(True, "base-model dropout on during the inner steps (reference)")
    log_metrics: str = _help("cheap", "cheap | full (extra forwards for text/qa gains)")
    val_steps: int = _help(
        100,
        "validate every N weighting-model updates, also before the first (the reference's spelling; "
        "--val_check_interval, if set, decides)",
        ge=1,
    )
    val_max_batches: int = _help(64, "at most this many validation batches", ge=1)
    sample_steps: int | None = _help(
        None, "write sample-weight pictures every N*grad_acc_steps batches (default val_steps)", ge=1
    )
    bm_learned_layers: int = _help(
        -1, "-1: all base parameters learn in the inner loop; n: the last n blocks + head", ge=-1
    )
    max_steps: int = _help(
        1000,
        "weighting-model updates (the reference's 50 epochs were never reached: it crashed after epoch 0)",
        ge=1,
    )
    precision: str = _help("32-true", "the tape runs in float32 (second-order terms in bf16 are noisy)")
    compile: bool = _help(
        False,
        "torch.compile the weighting model (in place; checkpoints keep their keys). The base model stays eager: "
        "its inner-loop tape needs double backward, which torch.compile lacks",
    )
    attn_implementation: str = _help(
        "eager",
        "attention of the base and weighting models; eager by default: the inner-loop tape needs double "
        "backward, which fused SDPA and flash-attention kernels lack",
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

    output_dir: str = _help("runs/eval", "where the CSV/JSON results and config.yaml go")
    dataset: str = _help("streamingqa", "streamingqa | squad | archivalqa | synthetic")
    test_path: str = _help("data/test.csv", "the table the stream is built from (a val table for lr sweeps)")
    full_passage: bool = _help(False, FULL_PASSAGE_HELP)
    downsample_to: int = _help(-1, "documents in the stream (-1: all)", ge=-1)
    seed: int = _help(42, "seed of the stream and of the run")
    base_model: str = _help("distilgpt2", "QA-tuned base model (folder or hub name)")
    base_model_state_dict: str | None = _help(None, "optional state dict loaded strictly into base_model")
    tokenizer_name: str | None = _help(None, "tokenizer (default: base_model's)")
    weight_model: str = _help(
        "CaMeLS",
        "CaMeLS | uniform | ssm | TFIDF | oracle (weight 1 on the gold answers' tokens in their documents: a "
        "sanity reference that knows the questions)",
    )
    weight_model_path: str | None = _help(
        None, "CaMeLS checkpoint (.pt from meta-train; required for CaMeLS)"
    )
    init_scalar: float = _help(1.0, "uniform weight value", ge=0)
    ssm_spacy_model: str = _help(
        "en_core_web_sm", "spaCy pipeline for ssm (rule_based: offline entity-ruler pipeline)"
    )
    tfidf_path: str | None = _help(
        None, "documents to fit TF-IDF on (default: all.csv beside test_path, else the stream)"
    )
    min_threshold: float = _help(
        0.0, "TF-IDF quantile cut-off (the README's thresholded recipe: 0.05)", ge=0, le=1
    )
    lr: float = _help(1e-4, "adaptation learning rate", ge=0)
    optimizer: str = _help("adam", "adam | sgd | adafactor")
    grad_clip_thresh: float = _help(750.0, "gradient-norm clip", gt=0)
    n_epochs: int = _help(1, "passes over the stream", ge=1)
    grad_acc_steps: int = _help(1, "documents per optimizer step", ge=1)
    max_text_len: int = _help(1024, "document token cap and loss length", ge=2)
    loss_norm: str = _help("padded", "padded | tokens | weights")
    eval: str = _help("em", "em | emK (K returned sequences, e.g. em4) | ppl")
    generation_strategy: str = _help("group_beam", "group_beam (reference) | beam | greedy")
    num_beams: int = _help(12, "beams", ge=1)
    num_beam_groups: int = _help(4, "beam groups", ge=1)
    diversity_penalty: float = _help(10.0, "Hamming diversity penalty", ge=0)
    length_penalty: float = _help(1.0, "length penalty exponent")
    max_new_tokens: int = _help(16, "answer length cap", ge=1)
    generation_batch_size: int = _help(1, "questions per generation batch (left padded)", ge=1)
    eval_init: bool = _help(False, "also evaluate before adaptation")
    eval_every_k: int = _help(
        -1, "-1: off; k: snapshot the base model every k documents, evaluate each after the stream", ge=-1
    )
    unrelated_qa_eval: bool = _help(
        False, "also evaluate the qa_val_path pairs before and after adaptation (forgetting)"
    )
    qa_lt_final: bool = _help(False, "QA light-tune after adaptation (the uniform + QA-tune baseline)")
    qa_train_path: str | None = _help(None, "QA pairs for light-tuning")
    qa_val_path: str | None = _help(
        None, "QA validation pairs (QA pre-training val split) for light-tuning and unrelated_qa_eval"
    )
    lt_lr: float = _help(2.5e-5, "light-tune lr", gt=0)
    lt_batch_size: int = _help(16, "light-tune batch", ge=1)
    lt_grad_acc_steps: int = _help(1, "light-tune accumulation", ge=1)
    lt_val_steps: int = _help(16, "light-tune validation interval (steps)", ge=1)
    lt_steps: int = _help(1000000, "light-tune step cap", ge=0)
    lt_stopping_metric: str = _help("max_f1", "max_f1 | avg_f1 | exact_match | nll")
    lt_patience: int = _help(3, "light-tune patience (validations)", ge=1)
    lt_early_stop: bool = _help(True, "early-stop light-tuning")
    device: str = _help("auto", "auto | cpu | cuda")
    precision: str = _help("32-true", "32-true | bf16-mixed (autocast for the first-order adaptation on GPU)")
    attn_implementation: str = _help("sdpa", "sdpa | eager | flash_attention_2")
    overwrite: bool = _help(False, "overwrite a finished run in output_dir")
    checkpoint_every_n_docs: int = _help(
        500,
        "save the adaptation state (model, optimizer, stream position) every N documents and after the "
        "stream, so an interrupted run resumes exactly (a multiple of grad_acc_steps; 0: never)",
        ge=0,
    )
    resume: str = _help(
        "auto", "auto (from <output_dir>/checkpoints/last.ckpt if there) | never | PATH of an eval checkpoint"
    )
    progress_bar: bool = _help(True, "show progress bars")

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

    output_dir: str = _help("results/camels", "writes bench.json and bench.md here")
    preset: str = _help(
        "auto",
        "auto (gpu on CUDA, cpu otherwise) | toy (seconds, for tests) | cpu (CPU sizes, ~2 min on 2 cores) | "
        "gpu (issue 13's sizes: DistilGPT-2 shape, 6 x 1024 tokens; GPT-2 XL adaptation in bf16)",
    )
    device: str = _help("auto", "auto (the preset's: cuda for gpu, cpu otherwise) | cpu | cuda")
    size: str = _help("auto", "auto (the preset's) | distilgpt2 | cpu | tiny | toy: the meta-step's models")
    doc_len: int = _help(0, "document length (0: the preset's)", ge=0)
    max_text_len: int = _help(0, "padded length of the reference mode (0: the preset's)", ge=0)
    n_docs: int = _help(0, "inner documents, sequential steps (0: the preset's, 6 on cpu and gpu)", ge=0)
    qa_len: int = _help(0, "QA sequence length (0: the preset's)", ge=0)
    loc_len: int = _help(0, "locality document length (0: the preset's)", ge=0)
    rounds: int = _help(
        0, "timed rounds; each runs every mode once, in rotating order (0: the preset's)", ge=0
    )
    warmup: int = _help(-1, "untimed meta-steps of every mode before the rounds (-1: the preset's)", ge=-1)
    eval_size: str = _help(
        "auto", "auto (the preset's: gpt2-xl on gpu) | gpt2-xl | gpt2-large | distilgpt2 | tiny | toy"
    )
    eval_docs: int = _help(0, "documents for the adaptation timing (0: the preset's)", ge=0)
    eval_questions: int = _help(0, "questions for the generation timing (0: the preset's)", ge=0)
    dtype: str = _help(
        "auto", "auto (the preset's) | float32 | bfloat16: adaptation/generation only; the tape stays float32"
    )
    modes: str = _help("unroll_padded,unroll,adjoint", "comma-separated meta-step modes")
    adjoint_keep_last: int = _help(
        1, "adjoint mode: inner steps whose graph is kept from the forward pass", ge=0
    )
    compile: bool = _help(
        False,
        "torch.compile the weighting model in every mode and the adaptation model (the base model's tape "
        "needs double backward, which torch.compile lacks)",
    )
    seed: int = _help(0, "seed")

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
    """Write the synthetic dataset (StreamingQA layout) used by tests, demo and reproduction."""

    output_dir: str = _help("data/synthetic", "folder for the CSVs")
    seed: int = _help(0, "seed")
    n_qa: int = _help(400, "QA pre-training documents (2 questions each)", ge=1)
    n_meta: int = _help(160, "meta-train documents", ge=1)
    n_test: int = _help(40, "test-stream documents", ge=1)

    def __post_init__(self) -> None:
        check_bounds(self)


@dataclasses.dataclass
class DemoConfig:
    """Tiny end-to-end run on synthetic data (< 2 min on 2 CPU cores)."""

    output_dir: str = _help("results/demo/camels", "where everything goes")
    seed: int = _help(0, "seed")


@dataclasses.dataclass
class ReproduceConfig:
    """Controlled reproduction (issue 11): synthetic facts among Brown Corpus text, a tiny base pre-trained on
    documents and QA pairs, CaMeLS vs uniform / SSM / TF-IDF and the oracle, seeds 0, 1, 2; claims.json and
    report.md. A rerun skips finished run folders."""

    output_dir: str = _help("results/camels", "where the claims, report, table and run folders go")
    quick: bool = _help(False, "one seed, tiny sizes, seconds (the test suite's run of the same code path)")
