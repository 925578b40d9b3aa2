"""Config dataclasses of every `diito` subcommand. Defaults are the reference's (`causal_train.py`), option names
kept so recipes translate 1:1 (`--gradient_accumulation_steps` is an alias of `--accumulate_grad_batches`,
`--dump_path` of `--output_dir`, `--force` of the common `--overwrite`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.training import TrainerOptions


def h(text: str, default=None, **bounds):
    """A config field with its help text and its declared range (`gt`, `ge`, `lt`, `le`), which lmlab checks
    after parsing (exit 2, one line naming the flag) and `--help` shows."""
    return field(default=default, metadata={"help": text, **bounds})


@dataclass
class BinarizeConfig:
    input: str = h(
        "text file (one sequence per line), folder, jsonl/csv, save_to_disk folder or hub name", ""
    )
    tokenizer_name: str = h("tokenizer folder (or hub name when online)", "")
    dump_file: str = h(
        "output prefix; the file is {dump_file}.{split}.{tokenizer}.npz", "data/binarized_text"
    )
    split: str = h("split of a DatasetDict / hub dataset", "train")
    field_name: str = h("text column", "text")
    max_parsing_example: int = h("stop after this many lines (-1: all)", -1, ge=-1)
    preprocessing_num_workers: int = h("tokenisation processes", 1, ge=1)
    seed: int = h("shuffle seed", 56)
    import_legacy_pickle: str = h("convert a reference .pickle (restricted loader) instead of tokenising", "")
    vocab_size: int = h("vocab size for --import_legacy_pickle", 30522, ge=1)

    def __post_init__(self):
        if not self.import_legacy_pickle and (not self.input or not self.tokenizer_name):
            raise ValueError("--input and --tokenizer_name are required (or --import_legacy_pickle PATH)")


@dataclass
class CombineConfig:
    inputs: list[str] = h(
        "two or more binarized .npz files (same tokenizer)",
        None,
    )
    output: str = h("combined .npz", "data/combined.npz")
    seed: int = h("shuffle seed", 56)

    def __post_init__(self):
        if not self.inputs or len(self.inputs) < 2:
            raise ValueError("--inputs needs at least two binarized files")


@dataclass
class TokenCountsConfig:
    data_file: str = h("binarized .npz", "")
    validation_file: str = h(
        "binarized .npz of held-out sequences: every loss term on it is logged as val/<term> "
        "every --val_check_interval micro-batches",
        "",
    )
    token_counts_dump: str = h("output .npy", "data/token_counts.npy")
    vocab_size: int = h("length of the counts array (-1: the file's vocabulary)", -1, ge=-1)

    def __post_init__(self):
        if not self.data_file:
            raise ValueError("--data_file is required")
        if self.vocab_size == 0:
            raise ValueError("--vocab_size must be -1 (the file's vocabulary) or at least 1")


@dataclass
class ExtractConfig:
    teacher_name: str = h("teacher folder (BertForMaskedLM, RoBERTa, GPT-2)", "")
    dump_checkpoint: str = h("output folder of the initialised student", "serialization_dir/student_init")
    num_layers: int = h(
        "student layers (3, 6 or 9 use the reference's choices for a 12-layer teacher)", 6, ge=1
    )
    layers: list[int] | None = h("explicit teacher layers to copy", None)
    student_type: str = h("distilbert (from BERT) | same (the teacher's architecture)", "distilbert")
    vocab_transform: bool = h("also copy the MLM head transform (the reference's default was off)", True)
    student_config: str = h("optional DistilBERT config JSON (e.g. a reference student config)", "")
    allow_random_head: bool = h(
        "accept a teacher without its LM head (e.g. a BertModel folder): the student's copied head is random",
        False,
    )

    def __post_init__(self):
        if not self.teacher_name:
            raise ValueError("--teacher_name is required")
        if self.student_type not in ("distilbert", "same", "bert", "roberta", "gpt2"):
            raise ValueError("--student_type must be distilbert, same, bert, roberta or gpt2")


@dataclass
class TrainConfig(TrainerOptions):
    student_type: str = h("distilbert | bert | roberta | gpt2", "distilbert")
    teacher_type: str = h("bert | roberta | gpt2", "bert")
    student_config: str = h("student config JSON (used when --student_pretrained_weights is not given)", "")
    student_pretrained_weights: str = h("student folder from `diito extract`", "")
    teacher_name: str = h("teacher folder", "")
    tokenizer_name: str = h("tokenizer folder (default: the teacher's)", "")
    data_file: str = h("binarized .npz", "")
    validation_file: str = h(
        "binarized .npz of held-out sequences: every loss term on it is logged as val/<term> "
        "every --val_check_interval micro-batches",
        "",
    )
    token_counts: str = h("token counts (.npy/.json) for MLM smoothing", "")
    neuron_mapping: str = h(
        "neuron mapping .nm file (a shipped name like single_middle_layer_6.nm works)", ""
    )
    temperature: float = h("softmax temperature", 2.0, gt=0)
    alpha_ce: float = h("distillation KL weight", 0.5, ge=0)
    alpha_mlm: float = h("MLM weight", 0.0, ge=0)
    alpha_clm: float = h("CLM weight", 0.5, ge=0)
    alpha_mse: float = h("logit MSE weight", 0.0, ge=0)
    alpha_cos: float = h("last hidden-state cosine weight", 0.0, ge=0)
    alpha_causal_ce: float = h("interchange (causal) KL weight", 0.0, ge=0)
    alpha_causal_cos: float = h("interchange (causal) cosine weight", 0.0, ge=0)
    mlm: bool = h("masked LM (else causal LM)", False)
    mlm_mask_prop: float = h("fraction of real tokens selected", 0.15, gt=0, le=1)
    word_mask: float = h("selected -> [MASK]", 0.8, ge=0, le=1)
    word_keep: float = h("selected -> kept", 0.1, ge=0, le=1)
    word_rand: float = h("selected -> random id", 0.1, ge=0, le=1)
    mlm_smoothing: float = h("selection weight count ** -smoothing", 0.7, ge=0)
    restrict_ce_to_mask: bool = h("KL terms only on MLM-selected positions", False)
    interchange_prop: float = h("fraction of min(len, len') swapped per row", 0.3, ge=0, le=1)
    interchange_max_token: int = h("cap on swapped positions per row (-1: none)", -1, ge=-1)
    interchange_consecutive_only: bool = h("swap one contiguous span per row", False)
    interchange_masked_token_only: bool = h("swap at the MLM-selected base positions", False)
    site_convention: str = h(
        "consistent (read+write block output) | reference (read block input: the reference bug)", "consistent"
    )
    detach_student_source: bool = h("stop gradients through the student's source pass (ablation)", False)
    fused: bool = h("one batched pass over base+source per model (else three separate passes)", True)
    freeze_pos_embs: bool = h("freeze the student's position embeddings", False)
    freeze_token_type_embds: bool = h("freeze token-type embeddings (RoBERTa students)", False)
    n_epoch: float = h("epochs (sets the step budget when --max_steps is -1)", 3.0, gt=0)
    batch_size: int = h("sequences per micro-batch (per device)", 5, ge=1)
    group_by_size: bool = h("length-grouped batches (the reference's flag was inverted)", True)
    repair_each_epoch: bool = h(
        "redraw the base/partner pairing every epoch (from seed and epoch; else one pairing for the run)",
        False,
    )
    save_each_epoch: bool = h(
        "export the student (stock HF folder) to <output_dir>/epoch_<k>/ at the end of each data epoch", True
    )
    warmup_prop: float = h("linear warm-up fraction of the optimiser steps", 0.05, ge=0, le=1)
    learning_rate: float = h("peak learning rate", 5e-4, gt=0)
    weight_decay: float = h("AdamW weight decay (never on biases and LayerNorms)", 0.0, ge=0)
    adam_epsilon: float = h("AdamW epsilon", 1e-6, gt=0)
    max_grad_norm: float = h("global gradient-norm clip", 5.0, ge=0)
    max_model_input_size: int = h("split longer sequences (-1: the teacher's max positions)", -1, ge=-1)
    num_workers: int = h("data-loader workers", 0, ge=0)
    allow_random_head: bool = h(
        "accept a teacher/student checkpoint without the LM head (e.g. a BertModel folder): that head starts random",
        False,
    )
    max_steps: int = h("optimizer steps (-1: from --n_epoch as the reference computes it)", -1, ge=-1)
    accumulate_grad_batches: int = h("micro-batches per optimizer step", 50, ge=1)
    seed: int = h("seed of everything (python, numpy, torch, pairing, masks, positions)", 56)
    log_every_n_steps: int = h("log every N optimizer steps", 10, ge=1)
    checkpoint_every_n_steps: int = h("resumable checkpoint every N optimizer steps", 4000, ge=1)
    val_check_interval: int | None = h(
        "validate on --validation_file every N micro-batches (None: never)", None, ge=1
    )

    def __post_init__(self):
        requested = self.max_steps
        if requested == -1:
            self.max_steps = 1
        try:
            super().__post_init__()
        finally:
            self.max_steps = requested
        if requested == 0 or requested < -1:
            raise ValueError("--max_steps must be -1 or at least 1")
        alphas = [
            self.alpha_ce,
            self.alpha_mlm,
            self.alpha_clm,
            self.alpha_mse,
            self.alpha_cos,
            self.alpha_causal_ce,
            self.alpha_causal_cos,
        ]
        if sum(alphas) <= 0:
            raise ValueError("--alpha_* must have a positive sum; give at least one loss a weight > 0")
        if self.mlm and (self.alpha_mlm <= 0 or self.alpha_clm != 0):
            raise ValueError("--mlm needs --alpha_mlm > 0 and --alpha_clm 0")
        if not self.mlm and self.alpha_mlm > 0:
            raise ValueError("--alpha_mlm > 0 needs --mlm")
        if abs(self.word_mask + self.word_keep + self.word_rand - 1) > 1e-6:
            raise ValueError("--word_mask + --word_keep + --word_rand must be 1")
        if self.interchange_consecutive_only and self.interchange_masked_token_only:
            raise ValueError(
                "--interchange_consecutive_only and --interchange_masked_token_only exclude each other"
            )
        if self.interchange_masked_token_only and not self.mlm:
            raise ValueError("--interchange_masked_token_only needs --mlm")
        if self.site_convention not in ("consistent", "reference"):
            raise ValueError("--site_convention must be consistent or reference")
        if 0 <= self.max_model_input_size < 3:
            raise ValueError("--max_model_input_size must be -1 or at least 3 (room for [CLS] x [SEP])")
        if self.validation_file and self.val_check_interval is None:
            raise ValueError(
                "--validation_file needs --val_check_interval N (validate every N micro-batches)"
            )
        if (self.alpha_causal_ce > 0 or self.alpha_causal_cos > 0) and not self.neuron_mapping:
            raise ValueError("--alpha_causal_ce/--alpha_causal_cos need --neuron_mapping")


TRAIN_ALIASES = {
    "gradient_accumulation_steps": "accumulate_grad_batches",
    "dump_path": "output_dir",
    "log_interval": "log_every_n_steps",
    "checkpoint_interval": "checkpoint_every_n_steps",
    "force": "overwrite",
}


BENCH_MODES = (
    "standard",
    "diito",
    "diito-separate",
    "standard-fp32",
    "diito-fp32",
    "standard-compile",
    "diito-compile",
)


@dataclass
class BenchConfig:
    output_dir: str = h("where bench.json / bench.md go", "results/diito")
    preset: str = h(
        "auto (gpu on CUDA, cpu otherwise) | toy (seconds, for tests) | cpu (CPU sizes) | gpu (the issue's sizes: "
        "BERT-base teacher, 6-layer student, batch 40 x 128, bf16 autocast, one GPU)",
        "auto",
    )
    device: str = h("auto (the preset's: cuda for gpu, cpu otherwise) | cpu | cuda", "auto")
    size: str = h(
        "auto (the preset's) | base (BERT-base shapes, vocab 30522) | small (12 x 256, vocab 8000) | tiny",
        "auto",
    )
    batch_size: int = h("sequences per step (-1: the preset's)", -1, ge=-1)
    seq_len: int = h("tokens per sequence, fixed (-1: the preset's)", -1, ge=-1)
    warmup: int = h("untimed steps of every arm before the timed rounds (-1: the preset's)", -1, ge=-1)
    rounds: int = h(
        "timed rounds; each round runs every arm once, in rotating order (-1: the preset's)", -1, ge=-1
    )
    modes: list[str] = h("arms to time (default: the preset's; `standard` is always the baseline)", None)
    compile: bool = h(
        "add torch.compile'd arms (standard-compile, diito-compile; teacher and student)", False
    )
    teacher_site: int = h("teacher site (-1: n_layers // 2, i.e. 6 as in single_middle_layer_6)", -1, ge=-1)
    student_site: int = h("student site (-1: n_layers // 2, i.e. 3)", -1, ge=-1)
    threads: int = h("CPU threads (-1: leave)", -1, ge=-1)
    seed: int = h("seed", 0)

    def __post_init__(self):
        if self.preset not in ("auto", "toy", "cpu", "gpu"):
            raise ValueError(f"--preset must be auto, toy, cpu or gpu, got {self.preset!r}")
        if self.size not in ("auto", "base", "small", "tiny"):
            raise ValueError(f"--size must be auto, base, small or tiny, got {self.size!r}")
        for name in ("batch_size", "rounds"):
            if getattr(self, name) == 0:
                raise ValueError(f"--{name} must be -1 (the preset's) or at least 1")
        if 0 <= self.seq_len < 2:
            raise ValueError("--seq_len must be -1 (the preset's) or at least 2 ([CLS] x [SEP])")
        unknown = [m for m in self.modes or () if m not in BENCH_MODES]
        if unknown:
            raise ValueError(f"--modes: unknown {unknown}; choose among {', '.join(BENCH_MODES)}")


@dataclass
class EvalMlmConfig:
    model_name_or_path: str = h("masked-LM folder", "")
    validation_file: str = h("text/jsonl/save_to_disk validation data", "")
    text_column: str = h("text column", "text")
    max_seq_length: int = h("block length (-1: tokenizer/model maximum, capped at 512)", -1, ge=-1)
    batch_size: int = h("blocks per batch", 8, ge=1)
    mlm_probability: float = h("masked fraction", 0.15, gt=0, le=1)
    max_eval_samples: int = h("blocks to evaluate (-1: all)", -1, ge=-1)
    device: str = h("auto | cpu | cuda", "auto")
    output_dir: str = h("results folder", "runs/eval_mlm")
    seed: int = h("masking seed", 42)


@dataclass
class FinetuneOptions:
    model_name_or_path: str = h("student (or any encoder) folder", "")
    output_dir: str = h("results folder", "runs/eval")
    learning_rate: float = h("AdamW learning rate", 2e-5, gt=0)
    num_train_epochs: float = h("epochs", 3.0, gt=0)
    per_device_train_batch_size: int = h("train batch", 32, ge=1)
    per_device_eval_batch_size: int = h("eval batch", 64, ge=1)
    weight_decay: float = h("AdamW weight decay", 0.0, ge=0)
    warmup_ratio: float = h("linear warm-up fraction", 0.0, ge=0, le=1)
    max_train_samples: int = h("cap on training examples (-1: all)", -1, ge=-1)
    max_eval_samples: int = h("cap on evaluation examples (-1: all)", -1, ge=-1)
    device: str = h("auto | cpu | cuda", "auto")
    seed: int = h("fine-tuning seed", 42)
    checkpoint_every_n_steps: int = h(
        "resumable checkpoint every N steps in <output_dir>/checkpoints (removed once results are written)",
        200,
        ge=1,
    )
    resume: str = h("auto (from <output_dir>/checkpoints/last.ckpt if there) | never | PATH", "auto")
    progress_bar: bool = h("show a progress bar while fine-tuning", True)
    compile: bool = h(
        "torch.compile the fine-tuned model (in place: checkpoints keep their keys); off by default", False
    )


@dataclass
class EvalGlueConfig(FinetuneOptions):
    task_name: str = h("cola sst2 mrpc qqp stsb mnli qnli rte wnli", "mrpc")
    train_file: str = h("GLUE train .tsv/.csv/.jsonl", "")
    validation_file: str = h("GLUE dev file", "")
    max_seq_length: int = h("tokens per example (padding to max length)", 128, ge=8)


@dataclass
class EvalNerConfig(FinetuneOptions):
    train_file: str = h("json/jsonl with tokens and ner_tags (CoNLL style)", "")
    validation_file: str = h("evaluation file (default: the train file)", "")
    max_seq_length: int = h("truncation", 512, ge=8)
    learning_rate: float = h("AdamW learning rate", 5e-5, gt=0)
    per_device_train_batch_size: int = h("train batch", 8, ge=1)


@dataclass
class EvalQaConfig(FinetuneOptions):
    train_file: str = h("SQuAD json (flat HF layout or the official nested one)", "")
    validation_file: str = h("evaluation file (default: the train file)", "")
    max_seq_length: int = h("window length", 384, ge=8)
    doc_stride: int = h("window overlap", 128, ge=0)
    n_best_size: int = h("start/end candidates", 20, ge=1)
    max_answer_length: int = h("longest answer in tokens", 30, ge=1)
    learning_rate: float = h("AdamW learning rate", 3e-5, gt=0)
    num_train_epochs: float = h("epochs", 2.0, gt=0)
    per_device_train_batch_size: int = h("train batch", 12, ge=1)


@dataclass
class DemoConfig:
    output_dir: str = h("results folder", "results/demo/diito")
    steps: int = h("optimizer steps per distillation run (the teacher gets twice as many)", 20, ge=1)
    seed: int = h("seed", 56)
    threads: int = h("CPU threads (1 is fastest on a shared machine)", 1, ge=1)


@dataclass
class ReproduceConfig:
    output_dir: str = h("results folder", "results/diito")
    quick: bool = h("one seed per arm, a slice of Brown, tiny models and a few steps (the tests' run)", False)
    teacher_steps: int = h("teacher MLM pre-training steps (0: the recipe's, 2000; 20 with --quick)", 0, ge=0)
    student_steps: int = h("distillation steps per student (0: the recipe's, 400; 6 with --quick)", 0, ge=0)
    seeds: list[int] = h("student seeds of every arm (default 0 1 2; 0 with --quick)", None)
    device: str = h("auto | cpu | cuda", "cpu")
    threads: int = h("CPU threads (-1: torch's default; 1 is fastest on a busy shared machine)", 1, ge=-1)
