# headless_lm: the reproduction (Brown Corpus, 3 seeds per arm, offline, one torch thread, <= 20 min on 2 idle cores)
# and the benchmark.
.PHONY: reproduce-headless_lm bench-headless_lm bench-headless_lm-gpu

reproduce-headless_lm: results/headless_lm/report.md ## headless vs vanilla decoder (equal compute) and encoder on Brown, 3 seeds: claims.json + report.md

results/headless_lm/report.md: $(INSTALL_STAMP)
	$(VENV_BIN)/headless-lm reproduce --output_dir results/headless_lm

bench-headless_lm: results/headless_lm/bench.json ## CWT vs head+CE (cpu preset, interleaved rounds): loss-only, decoder and MLM steps, sweeps

results/headless_lm/bench.json: $(INSTALL_STAMP)
	$(VENV_BIN)/headless-lm bench --task all --output_dir results/headless_lm

# on a CUDA machine (the gpu preset: issue 13 sizes, bf16 autocast): Pythia-70m 8x2048, BERT-base 64x128, K 16376 x V 50304
bench-headless_lm-gpu: $(INSTALL_STAMP) ## on a CUDA machine: CWT vs head+CE at the spec sizes (bf16)
	$(VENV_BIN)/headless-lm bench --task all --device cuda --preset gpu --precision bf16 --output_dir results/headless_lm/gpu
