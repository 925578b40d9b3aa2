# mode_connectivity: included by the root Makefile.
MC_OUT := results/mode_connectivity

.PHONY: reproduce-mode_connectivity bench-mode_connectivity bench-mode_connectivity-gpu

reproduce-mode_connectivity: $(MC_OUT)/REPORT.md ## mode connectivity (Qin et al. 2022): tiny-T5 reproduction, report + plots

# every step inside `reproduce` is skipped when its output exists, so a rerun resumes where it stopped
$(MC_OUT)/REPORT.md: $(INSTALL_STAMP)
	$(VENV_BIN)/mode-connectivity reproduce --output_dir $(MC_OUT)

bench-mode_connectivity: $(MC_OUT)/bench.json ## mode connectivity: in-place sweep vs reload per point (CPU, tiny T5)

$(MC_OUT)/bench.json: $(INSTALL_STAMP)
	OMP_NUM_THREADS=1 $(VENV_BIN)/mode-connectivity bench --config tiny --n_eval 256 --points 26 --mode both --tune_method adapter --output_dir $(MC_OUT)/bench-tiny-adapter-tmp
	OMP_NUM_THREADS=1 $(VENV_BIN)/mode-connectivity bench --config tiny --n_eval 256 --points 26 --mode both --tune_method model --output_dir $(MC_OUT)
	cp $(MC_OUT)/bench-tiny-adapter-tmp/bench.json $(MC_OUT)/bench-adapter.json
	cp $(MC_OUT)/bench-tiny-adapter-tmp/bench.md $(MC_OUT)/bench-adapter.md
	rm -rf $(MC_OUT)/bench-tiny-adapter-tmp

# on a CUDA machine (the lead's run): T5-base-shaped full model, bf16 autocast with fp32 master weights
bench-mode_connectivity-gpu: $(INSTALL_STAMP) ## on a CUDA machine: sweep vs reload, T5-base shape (bf16)
	$(VENV_BIN)/mode-connectivity bench --config t5-base-shaped --n_eval 256 --points 26 --mode both --tune_method model --device cuda --bf16 --output_dir $(MC_OUT)/bench-gpu
