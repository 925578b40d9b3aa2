# invariant_lm (Peyrard et al., EMNLP 2022): included by the root Makefile.
.PHONY: reproduce-invariant_lm bench-invariant_lm

reproduce-invariant_lm: results/invariant_lm/results.md ## IRM-games vs ERM vs ensembling on noisy environments, 3 seeds

# every run folder inside is skipped once finished, so an interrupted reproduction resumes where it stopped
results/invariant_lm/results.md: $(INSTALL_STAMP)
	$(VENV_BIN)/invariant-lm reproduce --output_dir results/invariant_lm

bench-invariant_lm: results/invariant_lm/bench.json ## n-environment IRM-games update vs plain MLM update

# --preset cpu (RoBERTa-base, 1 x 128, fp32) without a GPU, gpu (16 x 512, bf16) on one: interleaved rounds, medians
results/invariant_lm/bench.json: $(INSTALL_STAMP)
	$(VENV_BIN)/invariant-lm bench --output_dir results/invariant_lm
