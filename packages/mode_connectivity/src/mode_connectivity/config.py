"""Config dataclasses of every `mode-connectivity` subcommand. Defaults are the reference's
(`utils/options.py`); flag spellings keep the reference's (underscored, e.g. `--load_PET_path_1`);
hyphenated spellings work too."""

from __future__ import annotations

from dataclasses import dataclass, field

from lmlab.config import check_bounds
from lmlab.training import TrainerOptions

EVAL_MODES = ("generate", "rank")
TUNE_METHODS = ("model", "adapter", "lora", "prefix")


def _h(default, text, **bounds):
    """A field with its help text and its declared range (gt, ge, lt, le; checked by lmlab.config.check_bounds)."""
    return field(default=default, metadata={"help": text, **bounds})


def _hl(default, text):
    return field(default_factory=lambda: list(default), metadata={"help": text})


@dataclass
class TaskOptions:
    task_dir: str = _h(
        "", "task directory <root>/<task>/ with <task>_{train,dev,test}.tsv (the basename picks the metric)"
    )
    model: str = _h("", "local T5 model directory (save_pretrained); `make-tiny` builds one")
    tokenizer_path: str = _h("", "local tokenizer directory (default: --model)")
    max_input_length: int = _h(512, "truncate encoder inputs to this many tokens", ge=1)
    max_output_length: int = _h(64, "truncate targets / stop generation at this many tokens", ge=1)
    do_lowercase: bool = _h(False, "lowercase inputs and targets")
    append_another_bos: bool = _h(False, "prepend '<s> ' to inputs and targets")
    predict_batch_size: int = _h(32, "evaluation batch size", ge=1)
    eval_mode: str = _h(
        "generate", "generate (greedy decoding, the reference) | rank (score the label candidates)"
    )
    metric: str = _h("", "override the task's metric (ACC, EM, QA-F1, Classification-F1, ...)")
    choose_dev_1000: bool = _h(False, "evaluate only the first 1000 dev examples")
    choose_test_1000: bool = _h(False, "evaluate only the first 1000 test examples")
    bf16: bool = _h(False, "evaluate under bf16 autocast (fp32 master weights); CUDA only")

    def check_task(self) -> None:
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"--eval_mode must be one of {', '.join(EVAL_MODES)}, not {self.eval_mode!r}")


@dataclass
class MethodOptions:
    tune_method: str = _h(
        "model",
        "model (full fine-tuning) | adapter (the paper's delta tuning) | lora (peft) | prefix (peft prefix)",
    )
    apply_adapter: bool = _h(False, "attach adapters (implied by --tune_method adapter)")
    adapter_type: str = _h(
        "houlsby", "houlsby (after attention, cross-attention, FFN; SiLU) | pfeiffer (FFN only; ReLU)"
    )
    adapter_size: int = _h(64, "adapter bottleneck r (every paper script uses 12)", ge=1)
    r_mean: float = _h(0.0, "mean of the Normal init of both adapter matrices")
    r_std: float = _h(0.02, "std of the Normal init of both adapter matrices", ge=0)
    lora_r: int = _h(10, "LoRA rank (q and v projections)", ge=1)
    lora_alpha: int = _h(16, "LoRA alpha", gt=0)
    num_virtual_tokens: int = _h(
        20, "prefix tuning: virtual key/value tokens per decoder self-attention layer", ge=1
    )
    prefix_projection: bool = _h(False, "prefix tuning: produce the prefix with peft's two-layer MLP")

    def check_method(self) -> None:
        if self.tune_method not in TUNE_METHODS:
            raise ValueError(
                f"--tune_method must be one of {', '.join(TUNE_METHODS)}, not {self.tune_method!r}"
            )
        if self.adapter_type not in ("houlsby", "pfeiffer"):
            raise ValueError(f"--adapter_type must be houlsby or pfeiffer, not {self.adapter_type!r}")


@dataclass
class TrainConfig(TaskOptions, MethodOptions, TrainerOptions):
    output_dir: str = _h(
        "runs/train", "the run folder; a sweep over the lists: one per job in lr_<lr>_bsz_<bsz>_seed_<seed>/"
    )
    seed: int = _h(20, "seeds python/numpy/torch before model construction: adapter init AND data order")
    max_steps: int = _h(10_000_000, "stop after this many updates (--train_iters)", ge=1)
    train_epochs: int = _h(
        10_000_000, "stop after this many epochs (whichever of this and --train_iters first)", ge=1
    )
    learning_rate_list: list[float] = _hl([5e-5], "one training job per learning rate")
    bsz_list: list[int] = _hl(
        [32], "one training job per global batch size (split over processes and --accumulate_grad_batches)"
    )
    weight_decay: float = _h(
        0.01, "Adafactor weight decay (full fine-tuning only; none for biases/layer norms)", ge=0
    )
    max_grad_norm: float = _h(
        0.01, "gradient clipping norm (the reference's tiny value, kept for parity)", ge=0
    )
    warmup_rate: float = _h(
        0.06, "warm-up fraction; unused with the constant schedule (as in the reference)", ge=0, le=1
    )
    lr_decay_style: str = _h("constant", "constant (reference) | linear (warm-up then linear decay)")
    valid_interval: int = _h(5000, "evaluate dev every N updates and keep checkpoint-best", ge=1)
    output_interval: int = _h(10000, "save checkpoint@N every N updates", ge=1)
    early_stop: int = _h(-1, "stop after K non-improving validations (-1: off)", ge=-1)
    load_init_seed: int = _h(20, "with --SGD_noise: the seed whose saved initial state is loaded")
    SGD_noise: bool = _h(False, "load a saved initial state (--init_path) so only data order/dropout differ")
    init_path: str = _h("", "initial state for --SGD_noise (default <output_dir>/init_seed_<load_init_seed>)")
    save_init: str = _h(
        "", "write the initial state (adapters, or the whole model) to this checkpoint and go on"
    )
    cartography: bool = _h(False, "record per-example confidence/correctness on the train set every epoch")
    cartography_label_map: str = _h(
        "", "optional label renaming for cartography, e.g. entailment:a,neutral:b"
    )
    datasplit: str = _h("", "split1 (first half of train) | split2 (second half) | '' (all)")
    do_train: bool = _h(True, "train")
    do_valid: bool = _h(True, "validate on dev every --valid_interval updates")
    do_predict: bool = _h(True, "after training evaluate checkpoint-best on test")
    one_prefix: bool = _h(True, "only the task's own prefix (the reference's scripts always pass it)")
    keep_best_model: bool = _h(True, "keep the full-model checkpoint-best (the reference deleted it)")
    checkpoint_every_n_steps: int = _h(500, "Lightning resumable checkpoint every N steps", ge=1)
    log_every_n_steps: int = _h(100, "log every N updates (--log_interval)", ge=1)

    def __post_init__(self) -> None:
        TrainerOptions.__post_init__(self)
        self.check_task()
        self.check_method()
        if self.tune_method == "adapter":
            self.apply_adapter = True
        if self.datasplit not in ("", "split1", "split2"):
            raise ValueError(f"--datasplit must be split1, split2 or '', not {self.datasplit!r}")
        if self.lr_decay_style not in ("constant", "linear"):
            raise ValueError("--lr_decay_style must be constant or linear")
        if not self.learning_rate_list or any(lr <= 0 for lr in self.learning_rate_list):
            raise ValueError("--learning_rate_list must hold positive learning rates")
        accum = self.accumulate_grad_batches
        if not self.bsz_list or any(b < 1 or b % accum for b in self.bsz_list):
            raise ValueError(
                f"--bsz_list entries must be positive multiples of --accumulate_grad_batches {accum} "
                "(each update reads bsz examples in that many micro-batches)"
            )


TRAIN_ALIASES = {
    "train_iters": "max_steps",
    "log_interval": "log_every_n_steps",
    "learning_rate": "learning_rate_list",
    "train_batch_size": "bsz_list",
    "sgd_noise": "SGD_noise",
}


@dataclass
class EvaluateConfig(TaskOptions, MethodOptions):
    load_PET_path: str = _h("", "checkpoint to evaluate (empty: the bare PLM, or fresh adapters from --seed)")
    output_dir: str = _h("runs/evaluate", "where results.json, report.md and predictions.json go")
    do_valid: bool = _h(True, "evaluate the dev split")
    do_predict: bool = _h(True, "evaluate the test split")
    itp_on_train: bool = _h(False, "evaluate the full train file instead of dev")
    device: str = _h("auto", "auto | cpu | cuda")
    seed: int = _h(20, "seed (adapter init when no checkpoint is given)")

    def __post_init__(self) -> None:
        check_bounds(self)
        self.check_task()
        self.check_method()


@dataclass
class InterpolateConfig(EvaluateConfig):
    load_PET_path_1: str = _h("", "endpoint at a=0")
    load_PET_path_2: str = _h("", "endpoint at a=1")
    itpl_points: int = _h(26, "grid points including both ends (26: a = 0, 0.04, ..., 1)", ge=2)
    barrier_tol: float = _h(0.01, "connected = perf_barrier <= this (absolute)", ge=0)
    output_dir: str = _h(
        "runs/interpolate", "result.csv, analyses, results.json, report.md and plots go here"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.load_PET_path_1 or not self.load_PET_path_2:
            raise ValueError("--load_PET_path_1 and --load_PET_path_2 are required")


@dataclass
class CurveConfig(TaskOptions, MethodOptions, TrainerOptions):
    output_dir: str = _h(
        "runs/curve", "control points, result.csv, results.json, report.md, model/ and plots go here"
    )
    load_stage1_pet_path_list: list[str] = _hl([], "the two endpoints (checkpoints of the same method)")
    bend_num: int = _h(3, "number of control points n (Bezier degree n+1); the scripts use 1", ge=1)
    curve: str = _h("bezier", "bezier | polychain")
    curve_init: str = _h(
        "chord", "chord (points on the straight line) | normal (Normal(0, --curve_init_std), reference)"
    )
    curve_init_std: float = _h(0.02, "std of --curve_init normal", ge=0)
    itpl_points: int = _h(26, "evaluation grid in t", ge=2)
    learning_rate_list: list[float] = _hl([1e-4], "Adafactor learning rate (first entry used)")
    bsz_list: list[int] = _hl([16], "batch size (first entry used); scripts: 16 adapters, 8 full model")
    max_steps: int = _h(100_000, "updates (--train_iters); scripts: 10k adapters, 5k full model", ge=1)
    valid_interval: int = _h(
        2000, "validate at --valid_t every N updates; keep the best control points", ge=1
    )
    valid_t: list[float] = _hl(
        [0.7726, 0.373, 0.5129], "t values of validation (reference: these for adapters)"
    )
    t_samples: int = _h(
        0, "t samples per batch, gradients accumulated (0: 1 for delta tuning, 3 for full model)", ge=0
    )
    seed: int = _h(42, "seed of the control-point init and the t sampler")
    barrier_tol: float = _h(0.01, "connected = perf_barrier <= this", ge=0)
    do_train: bool = _h(True, "train the control points (off: evaluate an existing checkpoint-best)")
    do_valid: bool = _h(True, "evaluate dev")
    do_predict: bool = _h(True, "evaluate test")
    itp_on_train: bool = _h(False, "not used by curve (kept for flag compatibility)")
    log_every_n_steps: int = _h(50, "log every N updates", ge=1)
    checkpoint_every_n_steps: int = _h(500, "Lightning resumable checkpoint every N steps", ge=1)

    def __post_init__(self) -> None:
        TrainerOptions.__post_init__(self)
        self.check_task()
        self.check_method()
        if self.curve not in ("bezier", "polychain"):
            raise ValueError("--curve must be bezier or polychain")
        if self.curve_init not in ("chord", "normal"):
            raise ValueError("--curve_init must be chord or normal")
        if len(self.load_stage1_pet_path_list) != 2:
            raise ValueError("--load_stage1_pet_path_list needs exactly two checkpoints")
        if any(not 0.0 <= t <= 1.0 for t in self.valid_t) or not self.valid_t:
            raise ValueError("--valid_t values must lie in [0, 1]")


CURVE_ALIASES = {"train_iters": "max_steps", "log_interval": "log_every_n_steps"}


@dataclass
class LayerMixConfig(TaskOptions, MethodOptions, TrainerOptions):
    output_dir: str = _h(
        "runs/layer-mix", "results.json (learned group weights, dev/test metric), model/ go here"
    )
    load_stage1_pet_path_list: list[str] = _hl([], "the two endpoints (checkpoints of the same method)")
    layer_filter: str = _h("block", "group = block | layer (T5 sublayer) | weight (one tensor)")
    init_std: float = _h(10.0, "std of the Normal init of the group logits", ge=0)
    learning_rate: float = _h(0.1, "Adafactor learning rate (reference 0.1 or 0.05)", gt=0)
    bsz: int = _h(8, "batch size", ge=1)
    max_steps: int = _h(1000, "updates (--train_iters)", ge=1)
    seed: int = _h(42, "seed of the logit init and the data order")
    do_valid: bool = _h(True, "evaluate dev")
    do_predict: bool = _h(True, "evaluate test")
    log_every_n_steps: int = _h(50, "log every N updates", ge=1)

    def __post_init__(self) -> None:
        TrainerOptions.__post_init__(self)
        self.check_task()
        self.check_method()
        if self.layer_filter not in ("block", "layer", "weight"):
            raise ValueError("--layer_filter must be block, layer or weight")
        if len(self.load_stage1_pet_path_list) != 2:
            raise ValueError("--load_stage1_pet_path_list needs exactly two checkpoints")


@dataclass
class DistConfig:
    input1: str = _h("", "first checkpoint")
    input2: str = _h("", "second checkpoint")
    type: str = _h("model", "model | adapter | lora | prefix (the checkpoints' kind)")
    path: str = _h("", "also write distance.txt and distance.json into this directory")

    def __post_init__(self) -> None:
        if self.type not in TUNE_METHODS:
            raise ValueError(f"--type must be one of {', '.join(TUNE_METHODS)}")
        if not self.input1 or not self.input2:
            raise ValueError("--input1 and --input2 are required")


@dataclass
class CartographyProcessConfig:
    cartography_path: str = _h("", "cartography.json written by `train --cartography`")
    analysis_path: str = _h("", "valid_data_analysis.json written by `interpolate --itp_on_train`")
    save_path: str = _h("", "output text file (a .json with the same numbers is written beside it)")

    def __post_init__(self) -> None:
        if not self.cartography_path or not self.analysis_path or not self.save_path:
            raise ValueError("--cartography_path, --analysis_path and --save_path are required")


@dataclass
class MakeTinyConfig:
    output_dir: str = _h(
        "runs/tiny", "writes model/ (tiny T5 + tokenizer) and data/<task>/ (synthetic tasks)"
    )
    d_model: int = _h(64, "T5 d_model", ge=1)
    num_layers: int = _h(2, "encoder and decoder layers", ge=1)
    num_heads: int = _h(4, "attention heads", ge=1)
    d_ff: int = _h(128, "feed-forward width", ge=1)
    n_train: int = _h(2000, "training examples per synthetic task", ge=4)
    n_eval: int = _h(200, "dev and test examples per synthetic task", ge=2)
    pretrain_steps: int = _h(300, "denoising pre-training steps of the tiny T5 (0: leave it random)", ge=0)
    roberta: bool = _h(False, "also write a tiny RoBERTa (roberta/) and tiny GLUE folders (glue/)")
    seed: int = _h(0, "seed")

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.d_model % self.num_heads:
            raise ValueError("--d_model must be divisible by --num_heads")


@dataclass
class BenchConfig:
    preset: str = _h(
        "auto",
        "auto (gpu on CUDA, cpu otherwise) | toy (seconds, for tests) | cpu (tiny T5, 256 examples x 26 points, "
        "fp32) | gpu (T5-base shape, 256 examples x 26 points, bf16 autocast, one GPU)",
    )
    model_config: str = _h(
        "auto",
        "auto (the preset's) | tiny | t5-base-shaped (random weights, no download); `--config tiny` sets it",
    )
    tune_method: str = _h("both", "both | model | adapter: the sweeps timed (three rows each)")
    bench_eval: str = _h("loss", "loss (teacher-forced loss over the eval set) | generate")
    n_eval: int = _h(-1, "evaluation examples (-1: the preset's)", ge=-1)
    points: int = _h(-1, "grid points; one timed round per point, so at least 3 (-1: the preset's)", ge=-1)
    warmup: int = _h(-1, "untimed calls of every arm before the timed rounds (-1: the preset's)", ge=-1)
    seq_len: int = _h(-1, "encoder length of the random eval inputs (-1: the preset's)", ge=-1)
    batch_size: int = _h(-1, "eval batch size (-1: the preset's)", ge=-1)
    device: str = _h("auto", "auto (the preset's: cuda for gpu, cpu otherwise) | cpu | cuda")
    dtype: str = _h("auto", "auto (the preset's) | fp32 | bf16 (bf16 autocast over fp32 weights; CUDA only)")
    compile: bool = _h(False, "torch.compile the models evaluated in both arms (in place)")
    threads: int = _h(
        -1,
        "torch threads (-1: the preset's: 1 for toy and cpu, as the old OMP_NUM_THREADS=1; torch's own for gpu)",
        ge=-1,
    )
    output_dir: str = _h("runs/bench", "bench.json and bench.md go here")
    seed: int = _h(0, "seed")

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.preset not in ("auto", "toy", "cpu", "gpu"):
            raise ValueError("--preset must be auto, toy, cpu or gpu")
        if self.model_config not in ("auto", "tiny", "t5-base-shaped"):
            raise ValueError("--model_config (or --config) must be auto, tiny or t5-base-shaped")
        if self.tune_method not in ("both", "model", "adapter"):
            raise ValueError("--tune_method must be both, model or adapter")
        if self.bench_eval not in ("loss", "generate"):
            raise ValueError("--bench_eval must be loss or generate")
        if self.dtype not in ("auto", "fp32", "bf16"):
            raise ValueError("--dtype must be auto, fp32 or bf16")
        if self.dtype == "bf16" and self.device == "cpu":
            raise ValueError("--dtype bf16 (bf16 autocast) needs --device cuda; use --dtype fp32 on the CPU")
        if 0 <= self.points < 3:
            raise ValueError("--points must be -1 (the preset's) or at least 3 (one timed round per point)")
        for name in ("n_eval", "seq_len", "batch_size", "threads"):
            if getattr(self, name) == 0:
                raise ValueError(f"--{name} must be -1 (the preset's) or at least 1")


@dataclass
class DemoConfig:
    output_dir: str = _h("results/demo/mode_connectivity", "where the demo writes")
    steps: int = _h(120, "training updates per endpoint", ge=1)


@dataclass
class ReproduceConfig:
    output_dir: str = _h(
        "results/mode_connectivity", "report.md, claims.json, runs/, paths/ and plots go here"
    )
    quick: bool = _h(
        False, "the same code path at one pair per arm, a smaller tiny T5 and a few steps (tests)"
    )
    seeds: list[int] = _hl(
        [0, 1, 2], "seeds; seed arms pair each with the next cyclically, so n seeds = n pairs"
    )
    ft_steps: int = _h(200, "updates of each full fine-tuning run", ge=1)
    adapter_steps: int = _h(400, "updates of each adapter run", ge=1)
    curve_steps: int = _h(200, "updates of each adapter curve", ge=1)
    glue_steps: int = _h(300, "updates of each RoBERTa glue-train run", ge=1)
    itpl_points: int = _h(11, "grid points of every path", ge=2)
    n_train: int = _h(1000, "training examples of the synthetic tasks", ge=4)
    n_eval: int = _h(200, "dev examples of the synthetic tasks", ge=2)
    model: str = _h("", "real T5 directory (paper setting; needs a GPU); default: a tiny one from make-tiny")
    task_root: str = _h("", "real task root with glue-mnli/ (paper setting)")
    device: str = _h("auto", "auto | cpu | cuda")

    def __post_init__(self) -> None:
        check_bounds(self)
        if len(set(self.seeds)) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("--seeds needs at least two distinct seeds (a pair of minima per path)")
