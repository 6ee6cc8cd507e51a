# tunkit: the README's two commands are `make demo` and `make test`.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test unit e2e bench lint clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/tunkit demo

test: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src/tunkit/packet src/tunkit/p2p src/tunkit/wireguard src/tunkit/proxy src/tunkit/errors.py
	$(PY) -m pytest tests

unit: setup
	$(PY) -m pytest -q tests/unit tests/test_layering.py

e2e: setup
	$(PY) -m pytest -q tests/e2e

bench: setup
	$(PY) bench/p2p.py
	$(PY) bench/wg.py
	$(PY) bench/proxy.py

lint: setup
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy src/tunkit/packet src/tunkit/p2p src/tunkit/wireguard src/tunkit/proxy src/tunkit/errors.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
