# mode_connectivity: included by the root Makefile.
MC_OUT := results/mode_connectivity

.PHONY: reproduce-mode_connectivity bench-mode_connectivity bench-mode_connectivity-gpu

reproduce-mode_connectivity: $(MC_OUT)/report.md ## mode connectivity (Qin et al. 2022): tiny T5 + RoBERTa, 3 pairs per arm, claims.json + report

# every run and path inside `reproduce` is skipped when finished, so a rerun resumes where it stopped; one thread
# (the results are deterministic for a given seed and thread count)
$(MC_OUT)/report.md: $(INSTALL_STAMP)
	OMP_NUM_THREADS=1 $(VENV_BIN)/mode-connectivity reproduce --output_dir $(MC_OUT)

bench-mode_connectivity: $(MC_OUT)/bench.json ## mode connectivity: in-place sweep vs reload per point, full model and adapters (CPU preset, tiny T5)

$(MC_OUT)/bench.json: $(INSTALL_STAMP)
	$(VENV_BIN)/mode-connectivity bench --preset cpu --output_dir $(MC_OUT)

# on a CUDA machine: T5-base-shaped, bf16 autocast with fp32 master weights (also part of the root `make bench-gpu`)
bench-mode_connectivity-gpu: $(INSTALL_STAMP) ## on a CUDA machine: sweep vs reload, T5-base shape (bf16)
	$(VENV_BIN)/mode-connectivity bench --preset gpu --output_dir $(MC_OUT)/bench-gpu
