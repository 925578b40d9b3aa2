"""`invariant-lm reproduce`: the noisy environments' generator, the noise-mass metric, and `reproduce --quick`
end to end (claims.json against the run folders' files, report.md, resume)."""

import json

import pytest
import torch
from invariant_lm.cli import main
from invariant_lm.config import ReproduceConfig
from invariant_lm.reproduce import (
    SEQ_WORDS,
    Language,
    head_noise_mass,
    noise_mass,
    noise_tokens,
    word_tokenizer,
    write_language,
)

IDS = ["irm_noise_clean", "irm_noise_noisy", "irm_clean_ppl", "erm_learns_noise"]


def test_noise_replaces_only_its_environments_words_at_its_rate():
    lang = Language(n_noisy_envs=3, noise_words=3, noise_rate=0.4, seed=0)
    assert all(len(s) == 3 for s in lang.noise_sets)
    assert not (lang.noise_sets[0] & lang.noise_sets[1] or lang.noise_sets[1] & lang.noise_sets[2])
    for env in range(3):
        eligible = replaced = 0
        for _ in range(400):
            words = lang.sequence()
            noisy = lang.add_noise(words, env)
            assert len(noisy) == len(words) == SEQ_WORDS
            for w, n in zip(words, noisy, strict=True):
                if n != w:  # only this environment's words, only by this environment's token
                    assert w in lang.noise_sets[env] and n == f"<z{env}>"
                    replaced += 1
                eligible += w in lang.noise_sets[env]
        share = replaced / eligible  # binomial: 5 sigma around 0.4
        assert abs(share - 0.4) < 5 * (0.4 * 0.6 / eligible) ** 0.5, (env, eligible, share)


def test_written_environments_carry_only_their_own_noise(tmp_path):
    cfg = ReproduceConfig(n_noisy_envs=2, noise_words=4, noise_rate=0.5, train_lines=200, test_lines=30)
    write_language(tmp_path, cfg)
    noise = set(noise_tokens(2))

    def tokens(path):
        return [line.split() for line in path.read_text().splitlines()]

    for path in (
        tmp_path / "envs" / "clean.txt",
        tmp_path / "stage1" / "clean.txt",
        tmp_path / "test_clean.txt",
    ):
        assert not noise & {t for line in tokens(path) for t in line}
    for k in range(2):
        seen = {t for line in tokens(tmp_path / "envs" / f"noisy{k}.txt") for t in line} & noise
        assert seen == {f"<z{k}>"}
    test_noisy = tokens(tmp_path / "test_noisy.txt")
    assert len(test_noisy) == 30 and all(len(line) == SEQ_WORDS for line in test_noisy)
    for i, line in enumerate(test_noisy):  # line i: environment i mod 2's noise, never the other's
        assert set(line) & noise <= {f"<z{i % 2}>"}
    assert sum(set(line) & noise != set() for line in test_noisy) > 0


def test_noise_mass_sums_the_noise_tokens_probability_of_the_average_and_of_each_head(tmp_path):
    from invariant_lm.model import InvariantMLM
    from transformers import BertConfig, BertForMaskedLM

    cfg = ReproduceConfig(n_noisy_envs=3, train_lines=5, test_lines=10)
    write_language(tmp_path, cfg)
    tok = word_tokenizer(tmp_path / "tok", 3)
    noise = noise_tokens(3)
    assert tok("w1 <z2> w3")["input_ids"] == [2, 6, tok.convert_tokens_to_ids("<z2>"), 8, 3]
    config = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)  # fmt: skip
    base = BertForMaskedLM(config)
    test = tmp_path / "test_clean.txt"
    with torch.no_grad():  # uniform logits: every token 1/V, so the noise tokens together 3/V
        base.cls.predictions.decoder.weight.zero_()
        base.cls.predictions.bias.zero_()
    model = InvariantMLM.from_base(base, ["a", "b"])
    assert noise_mass(model, tok, test, SEQ_WORDS + 2, noise) == pytest.approx(3 / len(tok), rel=1e-5)
    with torch.no_grad():  # one head pushes <z1> up by 200: the averaged logit is +100, all mass on <z1>
        model.heads["a"].bias[tok.convert_tokens_to_ids("<z1>")] = 200.0
    assert noise_mass(model, tok, test, SEQ_WORDS + 2, noise) == pytest.approx(1.0, abs=1e-6)
    assert noise_mass(model, tok, test, SEQ_WORDS + 2, noise[:1]) < 1e-6
    per_head = head_noise_mass(
        model, tok, test, SEQ_WORDS + 2, noise
    )  # each head alone: a holds <z1>, b none
    assert list(per_head) == ["a", "b"]
    assert per_head["a"][1] == pytest.approx(1.0, abs=1e-6) and max(per_head["a"][0], per_head["a"][2]) < 1e-6
    assert per_head["b"] == pytest.approx([1 / len(tok)] * 3, rel=1e-5)


@pytest.mark.slow
def test_reproduce_quick_writes_claims_from_the_run_folders(tmp_path):
    from lmlab.claims import read_claims

    out = tmp_path / "repro"
    assert main(["reproduce", "--quick", "--output_dir", str(out)]) == 0
    raw = json.loads((out / "claims.json").read_text())
    assert raw["paper"] == "invariant_lm"
    assert [c["id"] for c in raw["claims"]] == [*IDS, "ensemble_noise_clean"]
    keys = {"id", "statement", "metric", "better", "tolerance", "method", "control", "method_values",
            "control_values", "holds"}  # fmt: skip
    assert all(set(c) == keys for c in raw["claims"])

    def files(arm: str) -> dict:  # the one seed of --quick, read from the run folder's own files
        run = out / f"stage2-{arm}-seed0"
        assert (run / "DONE").is_file()
        metrics = json.loads((run / "metrics_reproduce.json").read_text())
        ev = json.loads((run / "results.json").read_text())["eval"]
        assert metrics["clean_perplexity"] == ev[str(out / "data" / "test_clean.txt")]["perplexity"]
        assert metrics["noisy_perplexity"] == ev[str(out / "data" / "test_noisy.txt")]["perplexity"]
        heads = run / "heads_reproduce.json"
        assert arm == "ensemble" or list(json.loads(heads.read_text())) == (
            ["erm"] if arm == "erm" else ["clean", "noisy0", "noisy1", "noisy2"]
        )
        return metrics

    erm, irm, ens = files("erm"), files("irm"), files("ensemble")
    c = {x["id"]: x for x in raw["claims"]}
    assert c["irm_noise_clean"]["method_values"] == [irm["noise_mass_clean"]]
    assert c["irm_noise_clean"]["control_values"] == [erm["noise_mass_clean"]]
    assert c["irm_noise_noisy"]["method_values"] == [irm["noise_mass_noisy"]]
    assert c["irm_noise_noisy"]["control_values"] == [erm["noise_mass_noisy"]]
    assert c["irm_clean_ppl"]["method_values"] == [irm["clean_perplexity"]]
    assert c["irm_clean_ppl"]["control_values"] == [erm["clean_perplexity"]]
    assert (c["irm_clean_ppl"]["better"], c["irm_clean_ppl"]["tolerance"]) == ("within", 0.05)
    assert c["erm_learns_noise"]["better"] == "higher"
    assert c["erm_learns_noise"]["method_values"] == [erm["noise_mass_noisy"]]
    assert c["erm_learns_noise"]["control_values"] == [erm["noise_mass_clean"]]
    assert c["ensemble_noise_clean"]["method_values"] == [ens["noise_mass_clean"]]
    _, claims = read_claims(out / "claims.json")  # holds recomputed from the values
    assert [x.holds for x in claims] == [x["holds"] for x in raw["claims"]]
    report = (out / "report.md").read_text()
    assert report.startswith("# ") and report.splitlines()[2] == "## Claims"
    assert report.splitlines()[4].startswith("| claim |")
    assert all(f"`{i}`" in report for i in IDS)
    # a rerun resumes: every run is skipped (its files untouched) and the claims are the same
    stamp = (out / "stage2-irm-seed0" / "DONE").stat().st_mtime_ns
    assert main(["reproduce", "--quick", "--output_dir", str(out)]) == 0
    assert (out / "stage2-irm-seed0" / "DONE").stat().st_mtime_ns == stamp
    assert json.loads((out / "claims.json").read_text()) == raw
    # another design into the same folder is refused with one line, before anything is written
    assert main(["reproduce", "--quick", "--noise_rate", "0.9", "--output_dir", str(out)]) == 1
