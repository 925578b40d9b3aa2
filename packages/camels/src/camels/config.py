"""Config dataclasses of the `camels` subcommands. Defaults are the reference's (spec §9); names are the
reference's so `key=value` recipes translate."""

from __future__ import annotations

import dataclasses
from dataclasses import field

from lmlab.training import TrainerOptions

DATASETS = ("streamingqa", "squad", "archivalqa", "synthetic")
WEIGHTINGS = ("CaMeLS", "uniform", "ssm", "TFIDF")


def _help(default, text, **kw):
    return field(default=default, metadata={"help": text}, **kw)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"--{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


FULL_PASSAGE_HELP = "archivalqa: the document is the full article (column ans_text), not ans_paragraph"


def _check_full_passage(cfg) -> None:
    if cfg.full_passage and cfg.dataset != "archivalqa":
        raise ValueError(f"--full_passage applies to --dataset archivalqa only, got --dataset {cfg.dataset}")


def _check_positive(obj, *names, allow_zero=False):
    for n in names:
        v = getattr(obj, n)
        if v < 0 or (v == 0 and not allow_zero):
            raise ValueError(f"--{n} must be {'non-negative' if allow_zero else 'positive'}, got {v}")


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
    lr: float = _help(2.5e-5, "Adam learning rate")
    lt_batch_size: int = _help(32, "QA pairs per micro-batch")
    accumulate_grad_batches: int = _help(2, "micro-batches per update (reference: grad_acc_steps)")
    grad_clip_thresh: float = _help(100.0, "gradient-norm clip")
    val_steps: int = _help(512, "validate every N updates")
    val_max_pairs: int = _help(2048, "at most this many validation pairs (greedy F1/EM and NLL)")
    qa_eos: bool = _help(True, "append EOS to the answer")
    max_question_len: int = _help(128, "QA sequence length cap (question cut from the left)")
    early_stop: bool = _help(False, "stop when validation NLL has not improved for stop_k validations")
    stop_k: int = _help(10, "early-stopping patience (validations)")
    attn_implementation: str = _help("sdpa", "sdpa | eager | flash_attention_2")
    max_steps: int = _help(10000, "optimizer updates")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("dataset", self.dataset, DATASETS)
        _check_positive(
            self, "lr", "lt_batch_size", "val_steps", "max_question_len", "stop_k", "val_max_pairs"
        )


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
    hidden: int = _help(128, "weighting-model head width")
    non_linearity: str = _help("softplus", "softplus (beta 3) | sigmoid | exp | gelu | none")
    normalize: bool = _help(False, "rescale weights to mean 1 per document")
    freeze_base: bool = _help(False, "train only the weighting model's head")
    update_batch_size: int = _help(6, "documents per meta-step")
    sequential_update: bool = _help(True, "one inner SGD step per document (else one step on the batch)")
    num_inner_steps: int = _help(1, "passes of the inner loop with the same weights")
    inner_lr: float = _help(5e-4, "inner SGD learning rate")
    outer_lr: float = _help(1e-5, "Adam learning rate of the weighting model")
    grad_acc_steps: int = _help(4, "meta-steps per weighting-model update")
    reset_base_freq: int = _help(
        24, "documents after which the base is reset to its start (multiple of update_batch_size)"
    )
    c_kl: float = _help(0.1, "weight of the locality KL")
    web_text_loc: bool = _help(True, "use the locality KL on loc texts")
    qa_loc: bool = _help(
        False, "meta-train QA pairs as a second locality set (KL at answer-predicting positions only)"
    )
    loc_batch_size: int = _help(1, "locality documents per meta-step")
    c_norm: float = _help(0.0, "weight of the (w-1) norm penalty")
    grad_clip_thresh: float = _help(1e9, "weighting-model gradient clip")
    reduce_lr_on_plateau: bool = _help(
        False, "ReduceLROnPlateau (factor 0.7071, patience 5) on the validation total loss"
    )
    max_text_len: int = _help(
        1024, "document token cap; also the loss denominator's length (loss_norm padded)"
    )
    max_question_len: int = _help(128, "QA sequence cap")
    meta_grad_mode: str = _help(
        "unroll", "unroll (full tape, reference) | adjoint (exact, one step's graph at a time)"
    )
    adjoint_keep_last: int = _help(
        1, "adjoint: the last n inner steps keep their graph from the forward pass (not recomputed)"
    )
    loss_norm: str = _help("padded", "padded (reference: B*(max_text_len-1)) | tokens | weights")
    inner_dropout: bool = _help(True, "base-model dropout on during the inner steps (reference)")
    log_metrics: str = _help("cheap", "cheap | full (extra forwards for text/qa gains)")
    val_steps: int = _help(100, "validate every val_steps*grad_acc_steps batches (also at batch 0)")
    val_max_batches: int = _help(64, "at most this many validation batches")
    sample_steps: int | None = _help(
        None, "write sample-weight pictures every N*grad_acc_steps batches (default val_steps)"
    )
    bm_learned_layers: int = _help(
        -1, "-1: all base parameters learn in the inner loop; n: the last n blocks + head"
    )
    max_steps: int = _help(
        1000,
        "weighting-model updates (the reference's 50 epochs were never reached: it crashed after epoch 0)",
    )
    precision: str = _help("32-true", "the tape runs in float32 (second-order terms in bf16 are noisy)")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_choice("dataset", self.dataset, DATASETS)
        _check_full_passage(self)
        _check_choice("meta_grad_mode", self.meta_grad_mode, ("unroll", "adjoint"))
        _check_choice("loss_norm", self.loss_norm, ("padded", "tokens", "weights"))
        _check_choice("non_linearity", self.non_linearity, ("softplus", "sigmoid", "exp", "gelu", "none"))
        _check_choice("log_metrics", self.log_metrics, ("cheap", "full"))
        _check_positive(
            self,
            "update_batch_size",
            "num_inner_steps",
            "grad_acc_steps",
            "max_text_len",
            "val_steps",
            "hidden",
            "loc_batch_size",
            "val_max_batches",
        )
        _check_positive(self, "inner_lr", "outer_lr", "c_kl", "c_norm", allow_zero=True)
        if self.reset_base_freq > 1 and self.reset_base_freq % self.update_batch_size:
            raise ValueError(
                f"--reset_base_freq ({self.reset_base_freq}) must be a multiple of --update_batch_size ({self.update_batch_size})"
            )


@dataclasses.dataclass
class EvalConfig:
    """Online adaptation on a document stream, then closed-book QA (spec §7)."""

    output_dir: str = _help("runs/eval", "where the CSV/JSON results and config.yaml go")
    dataset: str = _help("streamingqa", "streamingqa | squad | archivalqa | synthetic")
    test_path: str = _help("data/test.csv", "the table the stream is built from (a val table for lr sweeps)")
    full_passage: bool = _help(False, FULL_PASSAGE_HELP)
    downsample_to: int = _help(-1, "documents in the stream (-1: all)")
    seed: int = _help(42, "seed of the stream and of the run")
    base_model: str = _help("distilgpt2", "QA-tuned base model (folder or hub name)")
    base_model_state_dict: str | None = _help(None, "optional state dict loaded strictly into base_model")
    tokenizer_name: str | None = _help(None, "tokenizer (default: base_model's)")
    weight_model: str = _help("CaMeLS", "CaMeLS | uniform | ssm | TFIDF")
    weight_model_path: str | None = _help(
        None, "CaMeLS checkpoint (.pt from meta-train; required for CaMeLS)"
    )
    init_scalar: float = _help(1.0, "uniform weight value")
    ssm_spacy_model: str = _help(
        "en_core_web_sm", "spaCy pipeline for ssm (rule_based: offline entity-ruler pipeline)"
    )
    tfidf_path: str | None = _help(
        None, "documents to fit TF-IDF on (default: all.csv beside test_path, else the stream)"
    )
    min_threshold: float = _help(0.0, "TF-IDF quantile cut-off (the README's thresholded recipe: 0.05)")
    lr: float = _help(1e-4, "adaptation learning rate")
    optimizer: str = _help("adam", "adam | sgd | adafactor")
    grad_clip_thresh: float = _help(750.0, "gradient-norm clip")
    n_epochs: int = _help(1, "passes over the stream")
    grad_acc_steps: int = _help(1, "documents per optimizer step")
    max_text_len: int = _help(1024, "document token cap and loss length")
    loss_norm: str = _help("padded", "padded | tokens | weights")
    eval: str = _help("em", "em | emK (K returned sequences, e.g. em4) | ppl")
    generation_strategy: str = _help("group_beam", "group_beam (reference) | beam | greedy")
    num_beams: int = _help(12, "beams")
    num_beam_groups: int = _help(4, "beam groups")
    diversity_penalty: float = _help(10.0, "Hamming diversity penalty")
    length_penalty: float = _help(1.0, "length penalty exponent")
    max_new_tokens: int = _help(16, "answer length cap")
    generation_batch_size: int = _help(1, "questions per generation batch (left padded)")
    eval_init: bool = _help(False, "also evaluate before adaptation")
    eval_every_k: int = _help(
        -1, "-1: off; k: snapshot the base model every k documents, evaluate each after the stream"
    )
    unrelated_qa_eval: bool = _help(
        False, "also evaluate the qa_val_path pairs before and after adaptation (forgetting)"
    )
    qa_lt_final: bool = _help(False, "QA light-tune after adaptation (the uniform + QA-tune baseline)")
    qa_train_path: str | None = _help(None, "QA pairs for light-tuning")
    qa_val_path: str | None = _help(
        None, "QA validation pairs (QA pre-training val split) for light-tuning and unrelated_qa_eval"
    )
    lt_lr: float = _help(2.5e-5, "light-tune lr")
    lt_batch_size: int = _help(16, "light-tune batch")
    lt_grad_acc_steps: int = _help(1, "light-tune accumulation")
    lt_val_steps: int = _help(16, "light-tune validation interval (steps)")
    lt_steps: int = _help(1000000, "light-tune step cap")
    lt_stopping_metric: str = _help("max_f1", "max_f1 | avg_f1 | exact_match | nll")
    lt_patience: int = _help(3, "light-tune patience (validations)")
    lt_early_stop: bool = _help(True, "early-stop light-tuning")
    device: str = _help("auto", "auto | cpu | cuda")
    precision: str = _help("32-true", "32-true | bf16-mixed (autocast for the first-order adaptation on GPU)")
    attn_implementation: str = _help("sdpa", "sdpa | eager | flash_attention_2")
    overwrite: bool = _help(False, "overwrite a finished run in output_dir")
    progress_bar: bool = _help(True, "show progress bars")

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("weight_model", self.weight_model, WEIGHTINGS)
        _check_choice("optimizer", self.optimizer, ("adam", "sgd", "adafactor"))
        _check_choice("generation_strategy", self.generation_strategy, ("group_beam", "beam", "greedy"))
        _check_choice("loss_norm", self.loss_norm, ("padded", "tokens", "weights"))
        _check_choice("precision", self.precision, ("32-true", "bf16-mixed", "auto"))
        _check_positive(self, "lr", "grad_clip_thresh", "max_new_tokens", allow_zero=True)
        _check_positive(
            self,
            "n_epochs",
            "grad_acc_steps",
            "max_text_len",
            "num_beams",
            "num_beam_groups",
            "generation_batch_size",
        )
        if not (self.eval in ("em", "ppl") or (self.eval.startswith("em") and self.eval[2:].isdigit())):
            raise ValueError(f"--eval must be em, emK (e.g. em4) or ppl, got {self.eval!r}")
        if self.weight_model == "CaMeLS" and not self.weight_model_path:
            raise ValueError("--weight_model_path is required with --weight_model CaMeLS")
        _check_full_passage(self)
        if self.eval_every_k == 0 or self.eval_every_k < -1:
            raise ValueError(f"--eval_every_k must be -1 (off) or positive, got {self.eval_every_k}")
        if self.eval_every_k > 0 and self.eval_every_k % self.grad_acc_steps:
            raise ValueError(
                f"--eval_every_k ({self.eval_every_k}) must be a multiple of --grad_acc_steps ({self.grad_acc_steps}) so snapshots fall after optimizer steps"
            )
        if self.unrelated_qa_eval and not self.qa_val_path:
            raise ValueError(
                "--unrelated_qa_eval true needs --qa_val_path (the QA pre-training validation pairs)"
            )


@dataclasses.dataclass
class BenchConfig:
    """Time and memory of a meta-step (unroll padded, unroll unpadded, adjoint), online adaptation and generation."""

    output_dir: str = _help("results/camels", "writes bench.json and bench.md here")
    device: str = _help("auto", "auto | cpu | cuda")
    size: str = _help("auto", "auto (distilgpt2 on cuda, cpu on cpu) | distilgpt2 | cpu | tiny")
    doc_len: int = _help(0, "document length (0: 1024 on cuda, 256 on cpu)")
    max_text_len: int = _help(0, "padded length of the reference mode (0: 1024 on cuda, 384 on cpu)")
    n_docs: int = _help(6, "inner documents (sequential steps)")
    qa_len: int = _help(32, "QA sequence length")
    loc_len: int = _help(0, "locality document length (0: same as max_text_len)")
    steps: int = _help(10, "timed meta-steps per mode (median)")
    warmup: int = _help(3, "warm-up meta-steps")
    eval_size: str = _help(
        "auto", "auto (gpt2-xl on cuda, tiny on cpu) | gpt2-xl | gpt2-large | distilgpt2 | tiny"
    )
    eval_docs: int = _help(0, "documents for the adaptation timing (0: 16 on cuda, 8 on cpu)")
    eval_questions: int = _help(0, "questions for the generation timing (0: 32 on cuda, 8 on cpu)")
    dtype: str = _help("float32", "float32 | bfloat16 (adaptation/generation only; the tape stays float32)")
    modes: str = _help("unroll_padded,unroll,adjoint", "comma-separated meta-step modes")
    adjoint_keep_last: int = _help(1, "adjoint mode: inner steps whose graph is kept from the forward pass")
    seed: int = _help(0, "seed")

    def __post_init__(self) -> None:
        _check_positive(self, "n_docs", "steps", "qa_len")


@dataclasses.dataclass
class SyntheticConfig:
    """Write the synthetic dataset (StreamingQA layout) used by tests, demo and reproduction."""

    output_dir: str = _help("data/synthetic", "folder for the CSVs")
    seed: int = _help(0, "seed")
    n_qa: int = _help(400, "QA pre-training documents (2 questions each)")
    n_meta: int = _help(160, "meta-train documents")
    n_test: int = _help(40, "test-stream documents")


@dataclasses.dataclass
class DemoConfig:
    """Tiny end-to-end run on synthetic data (< 2 min on 2 CPU cores)."""

    output_dir: str = _help("results/demo/camels", "where everything goes")
    seed: int = _help(0, "seed")


@dataclasses.dataclass
class ReproduceConfig:
    """Scaled-down reproduction: QA-pretrain a tiny model, meta-train, compare the four weightings on the
    synthetic stream and on the real SQuAD sample, each at its best lr of a small sweep."""

    output_dir: str = _help("results/camels", "where the table and plots go")
    seed: int = _help(0, "seed")
    quick: bool = _help(False, "much smaller settings (tests)")
