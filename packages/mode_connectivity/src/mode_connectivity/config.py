"""Config dataclasses of every `mode-connectivity` subcommand. Defaults are the reference's
(`utils/options.py`); flag spellings keep the reference's (underscored, e.g. `--load_PET_path_1`);
hyphenated spellings work too."""

from __future__ import annotations

from dataclasses import dataclass

from lmlab.config import check_bounds, option
from lmlab.training import TrainerOptions

EVAL_MODES = ("generate", "rank")
TUNE_METHODS = ("model", "adapter", "lora", "prefix")


@dataclass
class TaskOptions:
    task_dir: str = option(
        "task directory <root>/<task>/ with <task>_{train,dev,test}.tsv (the basename picks the metric)", ""
    )
    model: str = option("local T5 model directory (save_pretrained); `make-tiny` builds one", "")
    tokenizer_path: str = option("local tokenizer directory (default: --model)", "")
    max_input_length: int = option("truncate encoder inputs to this many tokens", 512, ge=1)
    max_output_length: int = option("truncate targets / stop generation at this many tokens", 64, ge=1)
    do_lowercase: bool = option("lowercase inputs and targets", False)
    append_another_bos: bool = option("prepend '<s> ' to inputs and targets", False)
    predict_batch_size: int = option("evaluation batch size", 32, ge=1)
    eval_mode: str = option(
        "generate (greedy decoding, the reference) | rank (score the label candidates)", "generate"
    )
    metric: str = option("override the task's metric (ACC, EM, QA-F1, Classification-F1, ...)", "")
    choose_dev_1000: bool = option("evaluate only the first 1000 dev examples", False)
    choose_test_1000: bool = option("evaluate only the first 1000 test examples", False)
    bf16: bool = option("evaluate under bf16 autocast (fp32 master weights); CUDA only", False)

    def check_task(self) -> None:
        if self.eval_mode not in EVAL_MODES:
            raise ValueError(f"--eval_mode must be one of {', '.join(EVAL_MODES)}, not {self.eval_mode!r}")


@dataclass
class MethodOptions:
    tune_method: str = option(
        "model (full fine-tuning) | adapter (the paper's delta tuning) | lora (peft) | prefix (peft prefix)",
        "model",
    )
    apply_adapter: bool = option("attach adapters (implied by --tune_method adapter)", False)
    adapter_type: str = option(
        "houlsby (after attention, cross-attention, FFN; SiLU) | pfeiffer (FFN only; ReLU)", "houlsby"
    )
    adapter_size: int = option("adapter bottleneck r (every paper script uses 12)", 64, ge=1)
    r_mean: float = option("mean of the Normal init of both adapter matrices", 0.0)
    r_std: float = option("std of the Normal init of both adapter matrices", 0.02, ge=0)
    lora_r: int = option("LoRA rank (q and v projections)", 10, ge=1)
    lora_alpha: int = option("LoRA alpha", 16, gt=0)
    num_virtual_tokens: int = option(
        "prefix tuning: virtual key/value tokens per decoder self-attention layer", 20, ge=1
    )
    prefix_projection: bool = option("prefix tuning: produce the prefix with peft's two-layer MLP", False)

    def check_method(self) -> None:
        if self.tune_method not in TUNE_METHODS:
            raise ValueError(
                f"--tune_method must be one of {', '.join(TUNE_METHODS)}, not {self.tune_method!r}"
            )
        if self.adapter_type not in ("houlsby", "pfeiffer"):
            raise ValueError(f"--adapter_type must be houlsby or pfeiffer, not {self.adapter_type!r}")


@dataclass
class TrainConfig(TaskOptions, MethodOptions, TrainerOptions):
    output_dir: str = option(
        "the run folder; a sweep over the lists: one per job in lr_<lr>_bsz_<bsz>_seed_<seed>/", "runs/train"
    )
    seed: int = option("seeds python/numpy/torch before model construction: adapter init AND data order", 20)
    max_steps: int = option("stop after this many updates (--train_iters)", 10_000_000, ge=1)
    train_epochs: int = option(
        "stop after this many epochs (whichever of this and --train_iters first)", 10_000_000, ge=1
    )
    learning_rate_list: list[float] = option("one training job per learning rate", [5e-5])
    bsz_list: list[int] = option(
        "one training job per global batch size (split over processes and --accumulate_grad_batches)", [32]
    )
    weight_decay: float = option(
        "Adafactor weight decay (full fine-tuning only; none for biases/layer norms)", 0.01, ge=0
    )
    max_grad_norm: float = option(
        "gradient clipping norm (the reference's tiny value, kept for parity)", 0.01, ge=0
    )
    warmup_rate: float = option(
        "warm-up fraction; unused with the constant schedule (as in the reference)", 0.06, ge=0, le=1
    )
    lr_decay_style: str = option("constant (reference) | linear (warm-up then linear decay)", "constant")
    valid_interval: int = option("evaluate dev every N updates and keep checkpoint-best", 5000, ge=1)
    output_interval: int = option("save checkpoint@N every N updates", 10000, ge=1)
    early_stop: int = option("stop after K non-improving validations (-1: off)", -1, ge=-1)
    load_init_seed: int = option("with --SGD_noise: the seed whose saved initial state is loaded", 20)
    SGD_noise: bool = option(
        "load a saved initial state (--init_path) so only data order/dropout differ", False
    )
    init_path: str = option(
        "initial state for --SGD_noise (default <output_dir>/init_seed_<load_init_seed>)", ""
    )
    save_init: str = option(
        "write the initial state (adapters, or the whole model) to this checkpoint and go on", ""
    )
    cartography: bool = option(
        "record per-example confidence/correctness on the train set every epoch", False
    )
    cartography_label_map: str = option(
        "optional label renaming for cartography, e.g. entailment:a,neutral:b", ""
    )
    datasplit: str = option("split1 (first half of train) | split2 (second half) | '' (all)", "")
    do_train: bool = option("train", True)
    do_valid: bool = option("validate on dev every --valid_interval updates", True)
    do_predict: bool = option("after training evaluate checkpoint-best on test", True)
    one_prefix: bool = option("only the task's own prefix (the reference's scripts always pass it)", True)
    keep_best_model: bool = option("keep the full-model checkpoint-best (the reference deleted it)", True)
    checkpoint_every_n_steps: int = option("Lightning resumable checkpoint every N steps", 500, ge=1)
    log_every_n_steps: int = option("log every N updates (--log_interval)", 100, ge=1)

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
    load_PET_path: str = option(
        "checkpoint to evaluate (empty: the bare PLM, or fresh adapters from --seed)", ""
    )
    output_dir: str = option("where results.json, report.md and predictions.json go", "runs/evaluate")
    do_valid: bool = option("evaluate the dev split", True)
    do_predict: bool = option("evaluate the test split", True)
    itp_on_train: bool = option("evaluate the full train file instead of dev", False)
    device: str = option("auto | cpu | cuda", "auto")
    seed: int = option("seed (adapter init when no checkpoint is given)", 20)
    overwrite: bool = option("run again into an --output_dir that holds a finished run (DONE)", False)

    def __post_init__(self) -> None:
        check_bounds(self)
        self.check_task()
        self.check_method()


@dataclass
class InterpolateConfig(EvaluateConfig):
    load_PET_path_1: str = option("endpoint at a=0", "")
    load_PET_path_2: str = option("endpoint at a=1", "")
    itpl_points: int = option("grid points including both ends (26: a = 0, 0.04, ..., 1)", 26, ge=2)
    barrier_tol: float = option("connected = perf_barrier <= this (absolute)", 0.01, ge=0)
    output_dir: str = option(
        "result.csv, analyses, results.json, report.md and plots go here", "runs/interpolate"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.load_PET_path_1 or not self.load_PET_path_2:
            raise ValueError("--load_PET_path_1 and --load_PET_path_2 are required")


@dataclass
class CurveConfig(TaskOptions, MethodOptions, TrainerOptions):
    output_dir: str = option(
        "control points, result.csv, results.json, report.md, model/ and plots go here", "runs/curve"
    )
    load_stage1_pet_path_list: list[str] = option("the two endpoints (checkpoints of the same method)", [])
    bend_num: int = option("number of control points n (Bezier degree n+1); the scripts use 1", 3, ge=1)
    curve: str = option("bezier | polychain", "bezier")
    curve_init: str = option(
        "chord (points on the straight line) | normal (Normal(0, --curve_init_std), reference)", "chord"
    )
    curve_init_std: float = option("std of --curve_init normal", 0.02, ge=0)
    itpl_points: int = option("evaluation grid in t", 26, ge=2)
    learning_rate_list: list[float] = option("Adafactor learning rate (first entry used)", [1e-4])
    bsz_list: list[int] = option("batch size (first entry used); scripts: 16 adapters, 8 full model", [16])
    max_steps: int = option("updates (--train_iters); scripts: 10k adapters, 5k full model", 100_000, ge=1)
    valid_interval: int = option(
        "validate at --valid_t every N updates; keep the best control points", 2000, ge=1
    )
    valid_t: list[float] = option(
        "t values of validation (reference: these for adapters)", [0.7726, 0.373, 0.5129]
    )
    t_samples: int = option(
        "t samples per batch, gradients accumulated (0: 1 for delta tuning, 3 for full model)", 0, ge=0
    )
    seed: int = option("seed of the control-point init and the t sampler", 42)
    barrier_tol: float = option("connected = perf_barrier <= this", 0.01, ge=0)
    do_train: bool = option("train the control points (off: evaluate an existing checkpoint-best)", True)
    do_valid: bool = option("evaluate dev", True)
    do_predict: bool = option("evaluate test", True)
    itp_on_train: bool = option("not used by curve (kept for flag compatibility)", False)
    log_every_n_steps: int = option("log every N updates", 50, ge=1)
    checkpoint_every_n_steps: int = option("Lightning resumable checkpoint every N steps", 500, ge=1)

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
    output_dir: str = option(
        "results.json (learned group weights, dev/test metric), model/ go here", "runs/layer-mix"
    )
    load_stage1_pet_path_list: list[str] = option("the two endpoints (checkpoints of the same method)", [])
    layer_filter: str = option("group = block | layer (T5 sublayer) | weight (one tensor)", "block")
    init_std: float = option("std of the Normal init of the group logits", 10.0, ge=0)
    learning_rate: float = option("Adafactor learning rate (reference 0.1 or 0.05)", 0.1, gt=0)
    bsz: int = option("batch size", 8, ge=1)
    max_steps: int = option("updates (--train_iters)", 1000, ge=1)
    seed: int = option("seed of the logit init and the data order", 42)
    do_valid: bool = option("evaluate dev", True)
    do_predict: bool = option("evaluate test", True)
    log_every_n_steps: int = option("log every N updates", 50, ge=1)

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
    input1: str = option("first checkpoint", "")
    input2: str = option("second checkpoint", "")
    type: str = option("model | adapter | lora | prefix (the checkpoints' kind)", "model")
    path: str = option("also write distance.txt and distance.json into this directory", "")

    def __post_init__(self) -> None:
        if self.type not in TUNE_METHODS:
            raise ValueError(f"--type must be one of {', '.join(TUNE_METHODS)}")
        if not self.input1 or not self.input2:
            raise ValueError("--input1 and --input2 are required")


@dataclass
class CartographyProcessConfig:
    cartography_path: str = option("cartography.json written by `train --cartography`", "")
    analysis_path: str = option("valid_data_analysis.json written by `interpolate --itp_on_train`", "")
    save_path: str = option("output text file (a .json with the same numbers is written beside it)", "")

    def __post_init__(self) -> None:
        if not self.cartography_path or not self.analysis_path or not self.save_path:
            raise ValueError("--cartography_path, --analysis_path and --save_path are required")


@dataclass
class MakeTinyConfig:
    output_dir: str = option(
        "writes model/ (tiny T5 + tokenizer) and data/<task>/ (synthetic tasks)", "runs/tiny"
    )
    d_model: int = option("T5 d_model", 64, ge=1)
    num_layers: int = option("encoder and decoder layers", 2, ge=1)
    num_heads: int = option("attention heads", 4, ge=1)
    d_ff: int = option("feed-forward width", 128, ge=1)
    n_train: int = option("training examples per synthetic task", 2000, ge=4)
    n_eval: int = option("dev and test examples per synthetic task", 200, ge=2)
    pretrain_steps: int = option(
        "denoising pre-training steps of the tiny T5 (0: leave it random)", 300, ge=0
    )
    roberta: bool = option("also write a tiny RoBERTa (roberta/) and tiny GLUE folders (glue/)", False)
    seed: int = option("seed", 0)

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.d_model % self.num_heads:
            raise ValueError("--d_model must be divisible by --num_heads")


@dataclass
class BenchConfig:
    preset: str = option(
        "auto (gpu on CUDA, cpu otherwise) | toy (seconds, for tests) | cpu (tiny T5, 256 examples x 26 points, "
        "fp32) | gpu (T5-base shape, 256 examples x 26 points, bf16 autocast, one GPU)",
        "auto",
    )
    model_config: str = option(
        "auto (the preset's) | tiny | t5-base-shaped (random weights, no download); `--config tiny` sets it",
        "auto",
    )
    tune_method: str = option("both | model | adapter: the sweeps timed (three rows each)", "both")
    bench_eval: str = option("loss (teacher-forced loss over the eval set) | generate", "loss")
    n_eval: int = option("evaluation examples (-1: the preset's)", -1, ge=-1)
    points: int = option(
        "grid points; one timed round per point, so at least 3 (-1: the preset's)", -1, ge=-1
    )
    warmup: int = option("untimed calls of every arm before the timed rounds (-1: the preset's)", -1, ge=-1)
    seq_len: int = option("encoder length of the random eval inputs (-1: the preset's)", -1, ge=-1)
    batch_size: int = option("eval batch size (-1: the preset's)", -1, ge=-1)
    device: str = option("auto (the preset's: cuda for gpu, cpu otherwise) | cpu | cuda", "auto")
    dtype: str = option(
        "auto (the preset's) | fp32 | bf16 (bf16 autocast over fp32 weights; CUDA only)", "auto"
    )
    compile: bool = option("torch.compile the models evaluated in both arms (in place)", False)
    threads: int = option(
        "torch threads (-1: the preset's: 1 for toy and cpu, as the old OMP_NUM_THREADS=1; torch's own for gpu)",
        -1,
        ge=-1,
    )
    output_dir: str = option("bench.json and bench.md go here", "runs/bench")
    seed: int = option("seed", 0)

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
    output_dir: str = option("where the demo writes", "results/demo/mode_connectivity")
    steps: int = option("training updates per endpoint", 120, ge=1)


@dataclass
class ReproduceConfig:
    output_dir: str = option(
        "report.md, claims.json, runs/, paths/ and plots go here", "results/mode_connectivity"
    )
    quick: bool = option(
        "the same code path at one pair per arm, a smaller tiny T5 and a few steps (tests)", False
    )
    seeds: list[int] = option(
        "seeds; seed arms pair each with the next cyclically, so n seeds = n pairs", [0, 1, 2]
    )
    ft_steps: int = option("updates of each full fine-tuning run", 200, ge=1)
    adapter_steps: int = option("updates of each adapter run", 400, ge=1)
    curve_steps: int = option("updates of each adapter curve", 200, ge=1)
    glue_steps: int = option("updates of each RoBERTa glue-train run", 300, ge=1)
    itpl_points: int = option("grid points of every path", 11, ge=2)
    n_train: int = option("training examples of the synthetic tasks", 1000, ge=4)
    n_eval: int = option("dev examples of the synthetic tasks", 200, ge=2)
    model: str = option(
        "real T5 directory (paper setting; needs a GPU); default: a tiny one from make-tiny", ""
    )
    task_root: str = option("real task root with glue-mnli/ (paper setting)", "")
    device: str = option("auto | cpu | cuda", "auto")

    def __post_init__(self) -> None:
        check_bounds(self)
        if len(set(self.seeds)) < 2 or len(set(self.seeds)) != len(self.seeds):
            raise ValueError("--seeds needs at least two distinct seeds (a pair of minima per path)")
