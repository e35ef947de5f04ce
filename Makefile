# `make run` serves the site; `make test` runs every test. Both set up .venv first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
ARGS ?=

.PHONY: all run dev test lint fmt bench bench-scale lighthouse screenshots clean

all: test lint

$(BIN)/.installed: requirements.txt requirements-dev.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	touch $@

run: $(BIN)/.installed
	PORT=$(PORT) $(BIN)/gunicorn -c gunicorn.conf.py "app:create_app()"

# The debug server reloads on changes; create_dev_app also starts the email sender, as gunicorn's workers do.
dev: $(BIN)/.installed
	$(BIN)/flask --app "app:create_dev_app()" run --debug --port $(PORT)

# axe-core for the accessibility tests, Lighthouse for `make lighthouse`, the HTTP Observatory for
# tests/test_deploy.py (package-lock.json pins them). No install scripts: the Observatory's would
# download Chrome's HSTS preload list, so it gets an empty one (a test site is on no such list).
OBSERVATORY_HSTS := node_modules/@mdn/mdn-http-observatory/conf/hsts-preload.json
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --ignore-scripts
	test -s $(OBSERVATORY_HSTS) || echo '{}' > $(OBSERVATORY_HSTS)
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

# The owner's guide's and the README's pictures of the real pages, in Debian's chromium, into docs/images/.
screenshots: $(BIN)/.installed
	$(BIN)/python bench/screenshots.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
