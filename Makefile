# Two commands do all the set-up on a fresh machine:
#   make demo   builds .venv if missing and runs the embedded default pipeline (SFT -> DPO -> GRPO)
#   make test   builds .venv if missing and runs the whole test suite (slow tests included, as CI does)
PY := .venv/bin/python

.PHONY: env demo test test-fast bench clean

env:
	@bash scripts/setup_env.sh

demo: env
	$(PY) -m grpo.cli run configs/tiny_arith.yaml $(ARGS)

test: env
	$(PY) -m pytest -q $(ARGS)

test-fast: env
	$(PY) -m pytest -q -m "not slow" $(ARGS)

bench: env
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/run_all.py $(ARGS)

clean:
	rm -rf runs artifacts .pytest_cache
