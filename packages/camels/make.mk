# camels (Hu et al., EMNLP 2023): included by the root Makefile.
CAMELS_RESULTS := results/camels

.PHONY: reproduce-camels bench-camels bench-camels-gpu

reproduce-camels: $(CAMELS_RESULTS)/report.md ## CaMeLS vs uniform / SSM / TF-IDF and the oracle on facts among Brown text, 3 seeds, one thread (claims.json, report.md)

# one thread (the reproduction also sets torch's), so the numbers repeat; a rerun skips finished run folders
$(CAMELS_RESULTS)/report.md: $(INSTALL_STAMP)
	OMP_NUM_THREADS=1 $(VENV_BIN)/camels reproduce --output_dir $(CAMELS_RESULTS)

bench-camels: $(CAMELS_RESULTS)/bench.json ## meta-step time/memory (unroll padded, unroll, adjoint) in interleaved rounds, CPU sizes; adaptation and generation speed

$(CAMELS_RESULTS)/bench.json: $(INSTALL_STAMP)
	$(VENV_BIN)/camels bench --preset cpu --output_dir $(CAMELS_RESULTS)

# on a CUDA machine: DistilGPT-2-shaped meta-step at 6 x 1024 tokens, GPT-2 XL-shaped adaptation/generation in bf16
bench-camels-gpu: $(INSTALL_STAMP) ## on a CUDA machine: the meta-step, adaptation and generation at the issue's sizes (--preset gpu)
	$(VENV_BIN)/camels bench --preset gpu --output_dir $(CAMELS_RESULTS)/gpu
