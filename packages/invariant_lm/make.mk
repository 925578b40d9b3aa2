# invariant_lm (Peyrard et al., EMNLP 2022): included by the root Makefile.
.PHONY: reproduce-invariant_lm bench-invariant_lm

reproduce-invariant_lm: results/invariant_lm/report.md ## does IRM-games remove environment-specific noise? ERM, IRM-games, ensembling, 3 seeds: claims.json + report.md

# every run folder inside is skipped once finished, so an interrupted reproduction resumes where it stopped;
# one torch thread (set by the command): results repeat for a given seed at that thread count
results/invariant_lm/report.md: $(INSTALL_STAMP)
	OMP_NUM_THREADS=1 $(VENV_BIN)/invariant-lm reproduce --output_dir results/invariant_lm --threads 1

bench-invariant_lm: results/invariant_lm/bench.json ## n-environment IRM-games update vs plain MLM update

# --preset cpu (RoBERTa-base, 1 x 128, fp32) without a GPU, gpu (16 x 512, bf16) on one: interleaved rounds, medians
results/invariant_lm/bench.json: $(INSTALL_STAMP)
	$(VENV_BIN)/invariant-lm bench --output_dir results/invariant_lm
