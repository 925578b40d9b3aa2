"""`invariant-lm reproduce` (`make reproduce-invariant_lm`): does IRM-games remove environment-specific noise?

Synthetic language: a random sparse first-order Markov chain over 40 words (3 successors each), 32-word
sequences. Environment `clean` is chain text; environment `noisy<k>` (k < n_noisy_envs) is the same chain where a
share `noise_rate` of the occurrences of its own `noise_words` words is replaced by its own noise token `<z<k>>`
(disjoint word sets, one token per environment). The noise is sparse (about one noise token per sequence), so a
sequence of a noisy environment often shows none: the environment is not trivially visible from the context, and
a model that learns the noise has to hedge and leaks it into clean text. Held out: clean chain text, and noisy
text (each line carries one noisy environment's noise, the environments in turn).

Stage 1: a tiny BERT trained from scratch as a plain MLM on clean text (the "pretrained" model, where every
arm of stage 2 starts). Stage 2, per seed: ERM (`--mode erm`, one head, the same round-robin stream of all
environments), IRM-games (`--mode irm`, one head per environment, body + head e per update) and ensembling
(`--mode ensemble`, the heads without the game: all stepped every update). Metrics per run, with fixed masks:
noise mass (the probability the model puts on the noise tokens at masked positions) on held-out clean and noisy
text, and perplexity on both. Every run folder keeps its metrics in `metrics_reproduce.json`; a finished run is
skipped, so an interrupted reproduction resumes. `claims.json` and `report.md` are built from those files.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from lmlab.claims import seeds_cell

from invariant_lm.config import ReproduceConfig, TrainConfig

N_WORDS, N_SUCC, SEQ_WORDS = 40, 3, 32
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
ARMS = ("erm", "irm", "ensemble")
METRICS = ("noise_mass_clean", "noise_mass_noisy", "clean_perplexity", "noisy_perplexity")
RUN_METRICS = "metrics_reproduce.json"
HEADS = "heads_reproduce.json"
PAPER = "invariant_lm"


def noise_tokens(n_noisy_envs: int) -> list[str]:
    return [f"<z{k}>" for k in range(n_noisy_envs)]


def word_tokenizer(folder: Path, n_noisy_envs: int):
    """A word-level tokenizer (one token per word and per noise token, BERT specials), saved to `folder`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = [f"w{i}" for i in range(N_WORDS)]
    vocab = {t: i for i, t in enumerate(SPECIALS + words + noise_tokens(n_noisy_envs))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    )  # fmt: skip
    fast.save_pretrained(folder)
    return fast


class Language:
    """The Markov chain, and each noisy environment's noise: `noise_sets[k]` are the words that `<z<k>>` replaces
    (with probability `noise_rate` per occurrence) in environment `noisy<k>`."""

    def __init__(self, n_noisy_envs: int, noise_words: int, noise_rate: float, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.succ = np.stack([self.rng.choice(N_WORDS, N_SUCC, replace=False) for _ in range(N_WORDS)])
        self.probs = self.rng.dirichlet(np.ones(N_SUCC), size=N_WORDS)
        order = self.rng.permutation(N_WORDS)
        self.noise_sets = [
            {f"w{i}" for i in order[k * noise_words : (k + 1) * noise_words]} for k in range(n_noisy_envs)
        ]
        self.noise = noise_tokens(n_noisy_envs)
        self.noise_rate = noise_rate

    def sequence(self) -> list[str]:
        w = int(self.rng.integers(N_WORDS))
        out = []
        for _ in range(SEQ_WORDS):
            out.append(f"w{w}")
            w = int(self.succ[w][self.rng.choice(N_SUCC, p=self.probs[w])])
        return out

    def add_noise(self, words: list[str], env: int) -> list[str]:
        """Environment `env`'s noise: each occurrence of one of its words becomes its noise token with
        probability `noise_rate`; every other word is left as it is."""
        hit = self.noise_sets[env]
        return [self.noise[env] if w in hit and self.rng.random() < self.noise_rate else w for w in words]


def write_language(folder: Path, cfg: ReproduceConfig) -> Language:
    """envs/clean.txt and envs/noisy<k>.txt (stage 2), stage1/clean.txt (stage 1), test_clean.txt and
    test_noisy.txt (held out; line i of test_noisy carries the noise of environment i mod n_noisy_envs); one
    32-word sequence per line, every line drawn afresh from the chain."""
    lang = Language(cfg.n_noisy_envs, cfg.noise_words, cfg.noise_rate, seed=cfg.data_seed)

    def lines(seqs) -> str:
        return "\n".join(" ".join(s) for s in seqs) + "\n"

    (folder / "envs").mkdir(parents=True, exist_ok=True)
    (folder / "stage1").mkdir(exist_ok=True)
    n, m = cfg.train_lines, cfg.test_lines
    (folder / "stage1" / "clean.txt").write_text(lines(lang.sequence() for _ in range(n)))
    (folder / "envs" / "clean.txt").write_text(lines(lang.sequence() for _ in range(n)))
    for k in range(cfg.n_noisy_envs):
        (folder / "envs" / f"noisy{k}.txt").write_text(
            lines(lang.add_noise(lang.sequence(), k) for _ in range(n))
        )
    (folder / "test_clean.txt").write_text(lines(lang.sequence() for _ in range(m)))
    (folder / "test_noisy.txt").write_text(
        lines(lang.add_noise(lang.sequence(), i % cfg.n_noisy_envs) for i in range(m))
    )
    return lang


def _masked_batches(tokenizer, test_file: Path, seq_len: int, mask_seed: int):
    from invariant_lm.data import eval_batches, load_text_file, make_collator, tokenize

    ds = tokenize(load_text_file(test_file), tokenizer, seq_len, line_by_line=True)
    return eval_batches(ds, make_collator(tokenizer), 64, mask_seed)


@torch.no_grad()
def noise_mass(
    model, tokenizer, test_file: Path, seq_len: int, noise: list[str], mask_seed: int = 1234
) -> float:
    """Mean, over the masked positions of `test_file` (fixed masks), of the probability the model's ensemble
    gives to the noise tokens together."""
    noise_ids = torch.tensor(tokenizer.convert_tokens_to_ids(noise))
    model.eval()
    total, count = 0.0, 0
    for b in _masked_batches(tokenizer, test_file, seq_len, mask_seed):
        p = model(**b, sparse=True).logits.float().softmax(-1)[:, noise_ids].sum(-1)
        total += p.sum().item()
        count += p.numel()
    return total / count


@torch.no_grad()
def head_noise_mass(
    model, tokenizer, test_file: Path, seq_len: int, noise: list[str], mask_seed: int = 1234
) -> dict[str, list[float]]:
    """{head: [mean probability of each noise token under that head's own softmax]}, over the masked positions of
    `test_file`: where the heads of an IRM-games model hold the noise that their average no longer shows."""
    noise_ids = torch.tensor(tokenizer.convert_tokens_to_ids(noise))
    model.eval()
    total, count = torch.zeros(model.n_heads, len(noise), dtype=torch.float64), 0
    for b in _masked_batches(tokenizer, test_file, seq_len, mask_seed):
        z = model(**b, sparse=True, return_head_logits=True).head_logits.float()  # [heads, masked, vocab]
        total += z.softmax(-1)[:, :, noise_ids].sum(1).double()
        count += z.shape[1]
    return {e: (total[i] / count).tolist() for i, e in enumerate(model.env_names)}


def _run(cfg: TrainConfig, tokenizer, data: Path, noise: list[str]) -> dict:
    """Train (a finished run is skipped) and return the run's metrics, kept in `<run>/metrics_reproduce.json`; an
    ERM or IRM-games run also gets `<run>/heads_reproduce.json` (`head_noise_mass` on held-out noisy text)."""
    from lmlab.io import is_done, write_json

    from invariant_lm.commands import run_train
    from invariant_lm.model import InvariantMLM

    out = Path(cfg.output_dir)
    if not is_done(out):
        run_train(cfg)
    todo = [
        f
        for f in (RUN_METRICS, HEADS)
        if not (out / f).is_file() and (f == RUN_METRICS or cfg.mode != "ensemble")
    ]
    if todo:
        model = InvariantMLM.from_pretrained(out)
        seq_len = SEQ_WORDS + 2
    if RUN_METRICS in todo:
        ev = json.loads((out / "results.json").read_text())["eval"]
        write_json(out / RUN_METRICS, {
            "noise_mass_clean": noise_mass(model, tokenizer, data / "test_clean.txt", seq_len, noise),
            "noise_mass_noisy": noise_mass(model, tokenizer, data / "test_noisy.txt", seq_len, noise),
            "clean_perplexity": ev[str(data / "test_clean.txt")]["perplexity"],
            "noisy_perplexity": ev[str(data / "test_noisy.txt")]["perplexity"],
        })  # fmt: skip
    if HEADS in todo:
        write_json(out / HEADS, head_noise_mass(model, tokenizer, data / "test_noisy.txt", seq_len, noise))
    return json.loads((out / RUN_METRICS).read_text())


def run_folder(out: Path, arm: str, seed: int) -> Path:
    return out / f"stage2-{arm}-seed{seed}"


def run_reproduce(cfg: ReproduceConfig) -> dict:
    from lmlab.device import set_threads
    from lmlab.errors import LmlabError
    from lmlab.io import write_json, write_results
    from transformers import BertConfig

    from invariant_lm.model import InvariantMLM, folded_mlm

    start = time.time()
    threads = set_threads(cfg.threads)
    out = Path(cfg.output_dir)
    data = out / "data"
    out.mkdir(parents=True, exist_ok=True)
    design = {k: v for k, v in vars(cfg).items() if k not in ("output_dir", "device", "threads")}
    design_file = out / "design.json"
    if design_file.is_file() and json.loads(design_file.read_text()) != design:
        raise LmlabError(
            f"{out} holds a reproduction with another design ({design_file}); give another --output_dir or "
            "remove it"
        )
    write_json(design_file, design)
    if not (data / "test_noisy.txt").exists():
        write_language(data, cfg)
    noise = noise_tokens(cfg.n_noisy_envs)
    tokenizer = word_tokenizer(data / "tokenizer", cfg.n_noisy_envs)
    tests = [str(data / "test_clean.txt"), str(data / "test_noisy.txt")]
    common = dict(
        tokenizer_name=str(data / "tokenizer"), validation_file=tests, do_train=True, do_eval=True,
        line_by_line=True, max_seq_length=SEQ_WORDS + 2, per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64, log_every_n_steps=50, checkpoint_every_n_steps=500, progress_bar=False,
        logger="none", device=cfg.device, max_grad_norm=cfg.max_grad_norm, lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
    )  # fmt: skip
    # stage 1: a plain MLM from scratch on clean text, exported as a standard HF checkpoint
    cfg_dir = data / "bert-config"
    BertConfig(vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, num_hidden_layers=2, num_attention_heads=2,
               intermediate_size=2 * cfg.hidden_size, max_position_embeddings=64,
               pad_token_id=0).save_pretrained(cfg_dir)  # fmt: skip
    stage1 = out / "stage1"
    stage1_metrics = _run(
        TrainConfig(config_name=str(cfg_dir), train_file=str(data / "stage1"), nb_steps=cfg.stage1_steps,
                    learning_rate=cfg.stage1_lr, output_dir=str(stage1), mode="irm", seed=1000,
                    **{**common, "lr_scheduler_type": "linear", "warmup_steps": 0, "max_grad_norm": 1.0}),
        tokenizer, data, noise,
    )  # fmt: skip
    stage1_hf = out / "stage1_hf"
    if not (stage1_hf / "config.json").exists():  # one head: exactly a plain masked LM, where stage 2 starts
        folded_mlm(InvariantMLM.from_pretrained(stage1)).save_pretrained(stage1_hf)
    # stage 2: every arm and seed from the stage-1 model, same data streams per seed
    results: dict[str, dict[int, dict]] = {arm: {} for arm in cfg.arms}
    for seed in cfg.seeds:
        for arm in cfg.arms:
            run = run_folder(out, arm, seed)
            results[arm][seed] = _run(
                TrainConfig(model_name_or_path=str(stage1_hf), train_file=str(data / "envs"),
                            nb_steps=cfg.stage2_steps, learning_rate=cfg.stage2_lr, output_dir=str(run), mode=arm,
                            seed=seed, **common),
                tokenizer, data, noise,
            )  # fmt: skip
            print(f"[reproduce] {arm} seed {seed}: {results[arm][seed]}", flush=True)
    rows = [{"arm": "stage1", "seed": 1000, **stage1_metrics}]
    rows += [{"arm": arm, "seed": s, **m} for arm in cfg.arms for s, m in results[arm].items()]
    write_results(rows, out, "results")
    claims = build_claims(out, cfg)
    from lmlab.claims import write_claims

    write_claims(PAPER, claims, out)
    wall = time.time() - start
    runs = [stage1] + [run_folder(out, arm, s) for arm in cfg.arms for s in cfg.seeds]
    train_s = sum(json.loads((r / "results.json").read_text())["train"]["train_seconds"] for r in runs)
    (out / "report.md").write_text(to_markdown(claims, rows, cfg, wall, threads, train_s, out))
    plot(rows, out / "noise_mass.png")
    print((out / "report.md").read_text())
    print(f"[invariant-lm] reproduction report in {out}/report.md ({wall / 60:.1f} min)")
    return {"rows": rows, "claims": [c.to_dict() for c in claims]}


def per_seed(out: Path, arm: str, seeds: list[int], metric: str) -> list[float]:
    """One metric of one arm, every seed, read from the run folders' files."""
    return [json.loads((run_folder(out, arm, s) / RUN_METRICS).read_text())[metric] for s in seeds]


def build_claims(out: Path, cfg: ReproduceConfig) -> list:
    from lmlab.claims import Claim

    def v(arm: str, metric: str) -> list[float]:
        return per_seed(out, arm, cfg.seeds, metric)

    claims = [
        Claim("irm_noise_clean", "IRM-games puts less probability on the noise tokens than ERM on held-out clean text",
              "noise_mass_clean", "lower", "irm", "erm", v("irm", "noise_mass_clean"), v("erm", "noise_mass_clean")),
        Claim("irm_noise_noisy", "IRM-games puts less probability on the noise tokens than ERM on held-out noisy text",
              "noise_mass_noisy", "lower", "irm", "erm", v("irm", "noise_mass_noisy"), v("erm", "noise_mass_noisy")),
        Claim("irm_clean_ppl", "IRM-games' clean perplexity is within 5% of ERM's", "clean_perplexity", "within",
              "irm", "erm", v("irm", "clean_perplexity"), v("erm", "clean_perplexity"), tolerance=0.05),
        Claim("erm_learns_noise", "sanity: ERM's noise mass on held-out noisy text is above its clean-text level "
              "(ERM learned the noise and can tell where it occurs)", "noise_mass", "higher", "erm on noisy text",
              "erm on clean text", v("erm", "noise_mass_noisy"), v("erm", "noise_mass_clean")),
    ]  # fmt: skip
    if "ensemble" in cfg.arms:
        claims.append(
            Claim(
                "ensemble_noise_clean",
                "ensembling (the heads without the game) puts less noise mass than ERM "
                "on held-out clean text",
                "noise_mass_clean",
                "lower",
                "ensemble",
                "erm",
                v("ensemble", "noise_mass_clean"),
                v("erm", "noise_mass_clean"),
            )  # fmt: skip
        )
    return claims


def reading(claims: list, rows: list[dict]) -> str:
    """The plain-words reading of what was measured, from the claims (and the stage-1 and ensembling rows)."""
    c = {x.id: x for x in claims}
    mean = statistics.fmean
    start = next(r for r in rows if r["arm"] == "stage1")
    learned = (
        f"ERM's noise mass on noisy text is {mean(c['erm_learns_noise'].method_values):.4g} against "
        f"{mean(c['erm_learns_noise'].control_values):.4g} on clean text (the stage-1 model it starts from: "
        f"{start['noise_mass_noisy']:.3g} on noisy text)"
    )
    if not c["erm_learns_noise"].holds:
        return (
            f"The sanity arm failed: {learned}, so in this set-up ERM did not learn to tell where the noise occurs, "
            "and the IRM rows say little about noise removal."
        )
    irm_c, erm_c = mean(c["irm_noise_clean"].method_values), mean(c["irm_noise_clean"].control_values)
    irm_n, erm_n = mean(c["irm_noise_noisy"].method_values), mean(c["irm_noise_noisy"].control_values)
    ppl = mean(c["irm_clean_ppl"].method_values) / mean(c["irm_clean_ppl"].control_values) - 1
    held = [x for x in ("irm_noise_clean", "irm_noise_noisy") if c[x].holds]
    verdict = (
        "The paper's claim (i), that IRM-games removes environment-specific noise, shows here"
        if len(held) == 2
        else "The paper's claim (i) shows here only in part"
        if held
        else "The paper's claim (i) does not show here"
    )
    text = (
        f"The sanity arm holds: {learned}. {verdict}: IRM-games puts {irm_c / erm_c:.2f}x ERM's noise mass on "
        f"clean text ({irm_c:.4g} vs {erm_c:.4g}) and {irm_n / erm_n:.2f}x on noisy text ({irm_n:.4g} vs "
        f"{erm_n:.4g}), with clean perplexity {ppl:+.1%} relative to ERM "
        f"({'within' if c['irm_clean_ppl'].holds else 'outside'} the 5% tolerance)."
    )
    ens = [r["noise_mass_clean"] for r in rows if r["arm"] == "ensemble"]
    if ens:
        text += (
            f" Ensembling (the same heads, without the game) puts {mean(ens):.4g} on clean text, "
            f"{mean(ens) / erm_c:.2f}x ERM's"
            + (
                ": the heads alone already lower it."
                if c["ensemble_noise_clean"].holds
                else ": what lowers the noise is the round-robin game, not the number of heads."
            )
        )
    return text


def heads_table(out: Path, cfg: ReproduceConfig) -> list[str]:
    """Where the noise is held: each head alone (its own softmax) on held-out noisy text, per noise token, mean over
    seeds; ERM's one head beside IRM-games' heads."""
    noise = noise_tokens(cfg.n_noisy_envs)
    lines = [
        "Each head alone (its own softmax) on held-out noisy text: mean probability of each noise token, mean over "
        "seeds. The model predicts with the average of its heads' logits, so a head can hold noise that the "
        "average does not show.",
        "",
        "| arm: head | " + " | ".join(f"`{z}`" for z in noise) + " |",
        "| --- |" + " --- |" * len(noise),
    ]
    for arm in ("erm", "irm"):
        heads = [json.loads((run_folder(out, arm, s) / HEADS).read_text()) for s in cfg.seeds]
        for head in heads[0]:
            cells = [statistics.fmean(h[head][i] for h in heads) for i in range(len(noise))]
            lines.append(f"| {arm}: {head} | " + " | ".join(f"{x:.3g}" for x in cells) + " |")
    return lines


def to_markdown(
    claims: list, rows: list[dict], cfg: ReproduceConfig, wall: float, threads: int, train_s: float, out: Path
) -> str:
    from lmlab.claims import claims_section

    arms = ["stage1", *cfg.arms]
    lines = [
        "# invariant_lm: does IRM-games remove environment-specific noise?",
        "",
        claims_section(claims, sanity=["erm_learns_noise"]).rstrip(),
        "",
        "## Results per arm",
        "",
        "Mean ± sample std over seeds, then every seed's value (seeds "
        + ", ".join(map(str, cfg.seeds))
        + "; stage 1 "
        "is one model, seed 1000, where every stage-2 run starts).",
        "",
        "| arm | " + " | ".join(METRICS) + " |",
        "| --- |" + " --- |" * len(METRICS),
    ]
    for arm in arms:
        rs = [r for r in rows if r["arm"] == arm]
        lines.append(f"| {arm} | " + " | ".join(seeds_cell([r[m] for r in rs]) for m in METRICS) + " |")
    lines += ["", *heads_table(out, cfg)]
    noisy = ", ".join(f"noisy{k}" for k in range(cfg.n_noisy_envs))
    lines += [
        "",
        "## Design",
        "",
        f"- **Language.** A random first-order Markov chain over {N_WORDS} words ({N_SUCC} successors each, data seed "
        f"{cfg.data_seed}), {SEQ_WORDS}-word sequences, a word-level tokenizer.",
        f"- **Environments** (stage 2): `clean` and {cfg.n_noisy_envs} noisy ones ({noisy}), {cfg.train_lines} "
        f"sequences each. In `noisy<k>`, each occurrence of its own {cfg.noise_words} words (disjoint sets) is "
        f"replaced by its own token `<z<k>>` with probability {cfg.noise_rate}: sparse noise, so many noisy "
        "sequences show none and the environment is not trivially visible from the context.",
        f"- **Held out** ({cfg.test_lines} sequences each, fixed evaluation masks): clean chain text, and noisy text "
        "(line i with the noise of environment i mod the number of noisy environments).",
        f"- **Stage 1**: a BERT (hidden {cfg.hidden_size}, 2 layers, 2 attention heads) trained from scratch as a "
        f"plain MLM on clean text, {cfg.stage1_steps} updates at lr {cfg.stage1_lr}, batch {cfg.batch_size}.",
        f"- **Stage 2** (from stage 1, {cfg.stage2_steps} updates at lr {cfg.stage2_lr}, batch {cfg.batch_size}, "
        f"scheduler {cfg.lr_scheduler_type} with {cfg.warmup_steps} warm-up updates, gradient clipping "
        + (f"at {cfg.max_grad_norm}" if cfg.max_grad_norm > 0 else "off")
        + "; every arm sees the same round-robin stream of the environments for a given seed): "
        "**erm** (one head, body + head every update), **irm** (IRM-games: one head per environment, logits "
        "averaged, body + head e updated on environment e's batch)"
        + (", **ensemble** (the same heads, all stepped every update: the heads without the game)" if "ensemble"
           in cfg.arms else "") + ".",
        "- **Metrics**: noise mass = mean over masked positions of the probability the model gives to all noise "
        "tokens together; perplexity over the masked positions (token-weighted).",
        f"- **Run**: {wall / 60:.1f} min wall time of the invocation that wrote this report (runs finished before "
        f"it are skipped); the runs' own training took {train_s / 60:.1f} min in all; "
        f"{threads} torch thread(s), device {cfg.device}"
        + (" (--quick: a smoke-sized run, not a result)" if cfg.quick else "") + ".",
        "",
        "## Reading",
        "",
        reading(claims, rows),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    panels = (("noise_mass_clean", "noise mass, clean text"), ("noise_mass_noisy", "noise mass, noisy text"),
              ("clean_perplexity", "clean perplexity"))  # fmt: skip
    for ax, (key, title) in zip(axes, panels, strict=True):
        for i, arm in enumerate(arms):
            vals = [r[key] for r in rows if r["arm"] == arm]
            ax.scatter([i] * len(vals), vals, color="C0")
            ax.bar(i, statistics.fmean(vals), alpha=0.4, color="C0")
        ax.set_xticks(range(len(arms)), arms)
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
