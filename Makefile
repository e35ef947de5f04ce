# `make run` serves the site; `make test` runs every test. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
ARGS ?=

.PHONY: all run dev test lint fmt bench bench-scale lighthouse clean

all: test lint

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(BIN)/.installed
	PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py "app:create_app()"

dev: $(BIN)/.installed
	$(BIN)/flask --app app run --debug --port $(PORT)

# axe-core for the accessibility tests, Lighthouse for `make lighthouse` (package-lock.json pins both).
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund
	touch $@

test: $(BIN)/.installed node_modules/.installed
	$(BIN)/pytest $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(BIN)/.installed
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(BIN)/.installed
	$(BIN)/python bench/run.py $(ARGS)

# The inbox, search, CSV and a purge on 10k, 100k and 1M generated leads (about 20 minutes; ARGS="--sizes 10000").
bench-scale: $(BIN)/.installed
	$(BIN)/python bench/scale.py $(ARGS)

lighthouse: $(BIN)/.installed node_modules/.installed
	$(BIN)/python bench/lighthouse.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
