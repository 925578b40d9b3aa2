"""Config dataclasses of every `diito` subcommand. Defaults are the reference's (`causal_train.py`), option names
kept so recipes translate 1:1 (`--gradient_accumulation_steps` is an alias of `--accumulate_grad_batches`,
`--dump_path` of `--output_dir`, `--force` of the common `--overwrite`)."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.config import option
from lmlab.training import TrainerOptions


@dataclass
class BinarizeConfig:
    input: str = option(
        "text file (one sequence per line), folder, jsonl/csv, save_to_disk folder or hub name", ""
    )
    tokenizer_name: str = option("tokenizer folder (or hub name when online)", "")
    dump_file: str = option(
        "output prefix; the file is {dump_file}.{split}.{tokenizer}.npz", "data/binarized_text"
    )
    split: str = option("split of a DatasetDict / hub dataset", "train")
    field_name: str = option("text column", "text")
    max_parsing_example: int = option("stop after this many lines (-1: all)", -1, ge=-1)
    preprocessing_num_workers: int = option("tokenisation processes", 1, ge=1)
    seed: int = option("shuffle seed", 56)
    import_legacy_pickle: str = option(
        "convert a reference .pickle (restricted loader) instead of tokenising", ""
    )
    vocab_size: int = option("vocab size for --import_legacy_pickle", 30522, ge=1)

    def __post_init__(self):
        if not self.import_legacy_pickle and (not self.input or not self.tokenizer_name):
            raise ValueError("--input and --tokenizer_name are required (or --import_legacy_pickle PATH)")


@dataclass
class CombineConfig:
    inputs: list[str] = option("two or more binarized .npz files (same tokenizer)", None)
    output: str = option("combined .npz", "data/combined.npz")
    seed: int = option("shuffle seed", 56)

    def __post_init__(self):
        if not self.inputs or len(self.inputs) < 2:
            raise ValueError("--inputs needs at least two binarized files")


@dataclass
class TokenCountsConfig:
    data_file: str = option("binarized .npz", "")
    validation_file: str = option(
        "binarized .npz of held-out sequences: every loss term on it is logged as val/<term> "
        "every --val_check_interval micro-batches",
        "",
    )
    token_counts_dump: str = option("output .npy", "data/token_counts.npy")
    vocab_size: int = option("length of the counts array (-1: the file's vocabulary)", -1, ge=-1)

    def __post_init__(self):
        if not self.data_file:
            raise ValueError("--data_file is required")
        if self.vocab_size == 0:
            raise ValueError("--vocab_size must be -1 (the file's vocabulary) or at least 1")


@dataclass
class ExtractConfig:
    teacher_name: str = option("teacher folder (BertForMaskedLM, RoBERTa, GPT-2)", "")
    dump_checkpoint: str = option(
        "output folder of the initialised student", "serialization_dir/student_init"
    )
    num_layers: int = option(
        "student layers (3, 6 or 9 use the reference's choices for a 12-layer teacher)", 6, ge=1
    )
    layers: list[int] | None = option("explicit teacher layers to copy", None)
    student_type: str = option("distilbert (from BERT) | same (the teacher's architecture)", "distilbert")
    vocab_transform: bool = option("also copy the MLM head transform (the reference's default was off)", True)
    student_config: str = option("optional DistilBERT config JSON (e.g. a reference student config)", "")
    allow_random_head: bool = option(
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
    student_type: str = option("distilbert | bert | roberta | gpt2", "distilbert")
    teacher_type: str = option("bert | roberta | gpt2", "bert")
    student_config: str = option(
        "student config JSON (used when --student_pretrained_weights is not given)", ""
    )
    student_pretrained_weights: str = option("student folder from `diito extract`", "")
    teacher_name: str = option("teacher folder", "")
    tokenizer_name: str = option("tokenizer folder (default: the teacher's)", "")
    data_file: str = option("binarized .npz", "")
    validation_file: str = option(
        "binarized .npz of held-out sequences: every loss term on it is logged as val/<term> "
        "every --val_check_interval micro-batches",
        "",
    )
    token_counts: str = option("token counts (.npy/.json) for MLM smoothing", "")
    neuron_mapping: str = option(
        "neuron mapping .nm file (a shipped name like single_middle_layer_6.nm works)", ""
    )
    temperature: float = option("softmax temperature", 2.0, gt=0)
    alpha_ce: float = option("distillation KL weight", 0.5, ge=0)
    alpha_mlm: float = option("MLM weight", 0.0, ge=0)
    alpha_clm: float = option("CLM weight", 0.5, ge=0)
    alpha_mse: float = option("logit MSE weight", 0.0, ge=0)
    alpha_cos: float = option("last hidden-state cosine weight", 0.0, ge=0)
    alpha_causal_ce: float = option("interchange (causal) KL weight", 0.0, ge=0)
    alpha_causal_cos: float = option("interchange (causal) cosine weight", 0.0, ge=0)
    mlm: bool = option("masked LM (else causal LM)", False)
    mlm_mask_prop: float = option("fraction of real tokens selected", 0.15, gt=0, le=1)
    word_mask: float = option("selected -> [MASK]", 0.8, ge=0, le=1)
    word_keep: float = option("selected -> kept", 0.1, ge=0, le=1)
    word_rand: float = option("selected -> random id", 0.1, ge=0, le=1)
    mlm_smoothing: float = option("selection weight count ** -smoothing", 0.7, ge=0)
    restrict_ce_to_mask: bool = option("KL terms only on MLM-selected positions", False)
    interchange_prop: float = option("fraction of min(len, len') swapped per row", 0.3, ge=0, le=1)
    interchange_max_token: int = option("cap on swapped positions per row (-1: none)", -1, ge=-1)
    interchange_consecutive_only: bool = option("swap one contiguous span per row", False)
    interchange_masked_token_only: bool = option("swap at the MLM-selected base positions", False)
    site_convention: str = option(
        "consistent (read+write block output) | reference (read block input: the reference bug)", "consistent"
    )
    detach_student_source: bool = option("stop gradients through the student's source pass (ablation)", False)
    fused: bool = option("one batched pass over base+source per model (else three separate passes)", True)
    freeze_pos_embs: bool = option("freeze the student's position embeddings", False)
    freeze_token_type_embds: bool = option("freeze token-type embeddings (RoBERTa students)", False)
    n_epoch: float = option("epochs (sets the step budget when --max_steps is -1)", 3.0, gt=0)
    batch_size: int = option("sequences per micro-batch (per device)", 5, ge=1)
    group_by_size: bool = option("length-grouped batches (the reference's flag was inverted)", True)
    repair_each_epoch: bool = option(
        "redraw the base/partner pairing every epoch (from seed and epoch; else one pairing for the run)",
        False,
    )
    save_each_epoch: bool = option(
        "export the student (stock HF folder) to <output_dir>/epoch_<k>/ at the end of each data epoch", True
    )
    warmup_prop: float = option("linear warm-up fraction of the optimiser steps", 0.05, ge=0, le=1)
    learning_rate: float = option("peak learning rate", 5e-4, gt=0)
    weight_decay: float = option("AdamW weight decay (never on biases and LayerNorms)", 0.0, ge=0)
    adam_epsilon: float = option("AdamW epsilon", 1e-6, gt=0)
    max_grad_norm: float = option("global gradient-norm clip", 5.0, ge=0)
    max_model_input_size: int = option("split longer sequences (-1: the teacher's max positions)", -1, ge=-1)
    num_workers: int = option("data-loader workers", 0, ge=0)
    allow_random_head: bool = option(
        "accept a teacher/student checkpoint without the LM head (e.g. a BertModel folder): that head starts random",
        False,
    )
    max_steps: int = option("optimizer steps (-1: from --n_epoch as the reference computes it)", -1, ge=-1)
    accumulate_grad_batches: int = option("micro-batches per optimizer step", 50, ge=1)
    seed: int = option("seed of everything (python, numpy, torch, pairing, masks, positions)", 56)
    log_every_n_steps: int = option("log every N optimizer steps", 10, ge=1)
    checkpoint_every_n_steps: int = option("resumable checkpoint every N optimizer steps", 4000, ge=1)
    val_check_interval: int | None = option(
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
    output_dir: str = option("where bench.json / bench.md go", "results/diito")
    preset: str = option(
        "auto (gpu on CUDA, cpu otherwise) | toy (seconds, for tests) | cpu (CPU sizes) | gpu (the issue's sizes: "
        "BERT-base teacher, 6-layer student, batch 40 x 128, bf16 autocast, one GPU)",
        "auto",
    )
    device: str = option("auto (the preset's: cuda for gpu, cpu otherwise) | cpu | cuda", "auto")
    size: str = option(
        "auto (the preset's) | base (BERT-base shapes, vocab 30522) | small (12 x 256, vocab 8000) | tiny",
        "auto",
    )
    batch_size: int = option("sequences per step (-1: the preset's)", -1, ge=-1)
    seq_len: int = option("tokens per sequence, fixed (-1: the preset's)", -1, ge=-1)
    warmup: int = option("untimed steps of every arm before the timed rounds (-1: the preset's)", -1, ge=-1)
    rounds: int = option(
        "timed rounds; each round runs every arm once, in rotating order (-1: the preset's)", -1, ge=-1
    )
    modes: list[str] = option("arms to time (default: the preset's; `standard` is always the baseline)", None)
    compile: bool = option(
        "add torch.compile'd arms (standard-compile, diito-compile; teacher and student)", False
    )
    teacher_site: int = option(
        "teacher site (-1: n_layers // 2, i.e. 6 as in single_middle_layer_6)", -1, ge=-1
    )
    student_site: int = option("student site (-1: n_layers // 2, i.e. 3)", -1, ge=-1)
    threads: int = option("CPU threads (-1: leave)", -1, ge=-1)
    seed: int = option("seed", 0)

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
    model_name_or_path: str = option("masked-LM folder", "")
    validation_file: str = option("text/jsonl/save_to_disk validation data", "")
    text_column: str = option("text column", "text")
    max_seq_length: int = option("block length (-1: tokenizer/model maximum, capped at 512)", -1, ge=-1)
    batch_size: int = option("blocks per batch", 8, ge=1)
    mlm_probability: float = option("masked fraction", 0.15, gt=0, le=1)
    max_eval_samples: int = option("blocks to evaluate (-1: all)", -1, ge=-1)
    device: str = option("auto | cpu | cuda", "auto")
    output_dir: str = option("results folder", "runs/eval_mlm")
    seed: int = option("masking seed", 42)
    overwrite: bool = option("run again into an --output_dir that holds a finished run (DONE)", False)


@dataclass
class FinetuneOptions:
    model_name_or_path: str = option("student (or any encoder) folder", "")
    output_dir: str = option("results folder", "runs/eval")
    learning_rate: float = option("AdamW learning rate", 2e-5, gt=0)
    num_train_epochs: float = option("epochs", 3.0, gt=0)
    per_device_train_batch_size: int = option("train batch", 32, ge=1)
    per_device_eval_batch_size: int = option("eval batch", 64, ge=1)
    weight_decay: float = option("AdamW weight decay", 0.0, ge=0)
    warmup_ratio: float = option("linear warm-up fraction", 0.0, ge=0, le=1)
    max_train_samples: int = option("cap on training examples (-1: all)", -1, ge=-1)
    max_eval_samples: int = option("cap on evaluation examples (-1: all)", -1, ge=-1)
    device: str = option("auto | cpu | cuda", "auto")
    seed: int = option("fine-tuning seed", 42)
    checkpoint_every_n_steps: int = option(
        "resumable checkpoint every N steps in <output_dir>/checkpoints (removed once results are written)",
        200,
        ge=1,
    )
    resume: str = option("auto (from <output_dir>/checkpoints/last.ckpt if there) | never | PATH", "auto")
    overwrite: bool = option("run again into an --output_dir that holds a finished run (DONE)", False)
    progress_bar: bool = option("show a progress bar while fine-tuning", True)
    compile: bool = option(
        "torch.compile the fine-tuned model (in place: checkpoints keep their keys); off by default", False
    )


@dataclass
class EvalGlueConfig(FinetuneOptions):
    task_name: str = option("cola sst2 mrpc qqp stsb mnli qnli rte wnli", "mrpc")
    train_file: str = option("GLUE train .tsv/.csv/.jsonl", "")
    validation_file: str = option("GLUE dev file", "")
    max_seq_length: int = option("tokens per example (padding to max length)", 128, ge=8)


@dataclass
class EvalNerConfig(FinetuneOptions):
    train_file: str = option("json/jsonl with tokens and ner_tags (CoNLL style)", "")
    validation_file: str = option("evaluation file (default: the train file)", "")
    max_seq_length: int = option("truncation", 512, ge=8)
    learning_rate: float = option("AdamW learning rate", 5e-5, gt=0)
    per_device_train_batch_size: int = option("train batch", 8, ge=1)


@dataclass
class EvalQaConfig(FinetuneOptions):
    train_file: str = option("SQuAD json (flat HF layout or the official nested one)", "")
    validation_file: str = option("evaluation file (default: the train file)", "")
    max_seq_length: int = option("window length", 384, ge=8)
    doc_stride: int = option("window overlap", 128, ge=0)
    n_best_size: int = option("start/end candidates", 20, ge=1)
    max_answer_length: int = option("longest answer in tokens", 30, ge=1)
    learning_rate: float = option("AdamW learning rate", 3e-5, gt=0)
    num_train_epochs: float = option("epochs", 2.0, gt=0)
    per_device_train_batch_size: int = option("train batch", 12, ge=1)


@dataclass
class DemoConfig:
    output_dir: str = option("results folder", "results/demo/diito")
    steps: int = option("optimizer steps per distillation run (the teacher gets twice as many)", 20, ge=1)
    seed: int = option("seed", 56)
    threads: int = option("CPU threads (1 is fastest on a shared machine)", 1, ge=1)


@dataclass
class ReproduceConfig:
    output_dir: str = option("results folder", "results/diito")
    quick: bool = option(
        "one seed per arm, a slice of Brown, tiny models and a few steps (the tests' run)", False
    )
    teacher_steps: int = option(
        "teacher MLM pre-training steps (0: the recipe's, 2000; 20 with --quick)", 0, ge=0
    )
    student_steps: int = option(
        "distillation steps per student (0: the recipe's, 400; 6 with --quick)", 0, ge=0
    )
    seeds: list[int] = option("student seeds of every arm (default 0 1 2; 0 with --quick)", None)
    device: str = option("auto | cpu | cuda", "cpu")
    threads: int = option(
        "CPU threads (-1: torch's default; 1 is fastest on a busy shared machine)", 1, ge=-1
    )
