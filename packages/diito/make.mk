# diito: included by the root Makefile.
DIITO_RESULTS := results/diito

.PHONY: reproduce-diito bench-diito
reproduce-diito: $(DIITO_RESULTS)/report.md ## DIITO vs standard and equal-KL-weight distillation on Brown, 3 seeds: claims.json, report.md (CPU, one thread: ~16 min of CPU, 19 min wall on the shared machine)

$(DIITO_RESULTS)/report.md: $(INSTALL_STAMP)
	$(VENV_BIN)/diito reproduce --output_dir $(DIITO_RESULTS)

bench-diito: $(DIITO_RESULTS)/bench.json ## DIITO step vs standard distillation step (time, memory)

$(DIITO_RESULTS)/bench.json: $(INSTALL_STAMP)
	$(VENV_BIN)/diito bench --output_dir $(DIITO_RESULTS)
