# The two commands a newcomer needs: `make demo` and `make test`. Everything else is a step of those.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
NPM_BIN := node_modules/.bin
STAMP_PY := $(VENV)/.installed
STAMP_NPM := node_modules/.installed

.PHONY: lock wheel contracts venv npm gen gen-check lint-proto breaking compose-check browser lint typecheck docs pytest test demo bench chaos clean

LOCK := requirements-dev.txt

# Every Python package comes from the lock, checked against its hashes, so the same commit
# installs the same versions on every machine; the project itself goes in editable, without
# resolving anything (the build backend, hatchling, is in the lock too).
$(STAMP_PY): pyproject.toml contracts/pyproject.toml reference/pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes --no-deps -r $(LOCK)
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . -e contracts -e reference
	$(PY) -m pip check
	touch $@

$(STAMP_NPM): package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

venv: $(STAMP_PY)
npm: $(STAMP_NPM)

## Re-resolve requirements-dev.txt from pyproject.toml (newest versions its ranges allow).
lock: venv
	$(BIN)/uv pip compile pyproject.toml --extra dev --generate-hashes --universal \
	  --python-version 3.11 --quiet -o $(LOCK)

## The runtime wheel (dist/choreo-*.whl): the choreo package alone, no reference services.
wheel: venv
	$(PY) -m build --wheel --outdir dist .

## The contracts as a Python wheel and an npm tarball in dist/
contracts: venv npm
	$(PY) -m build --wheel --no-isolation --outdir dist contracts
	scripts/pack_contracts.sh dist

## Regenerate gen/python and gen/ts from proto/.
gen: venv npm
	PATH="$(CURDIR)/$(BIN):$(CURDIR)/$(NPM_BIN):$$PATH" scripts/gen.sh

## Fail when gen/ is not what proto/ generates.
gen-check: venv npm
	PATH="$(CURDIR)/$(BIN):$(CURDIR)/$(NPM_BIN):$$PATH" scripts/gen.sh --check

lint-proto: npm
	$(NPM_BIN)/buf lint

## Fail on a breaking change against the released schema (proto-baseline/).
breaking: npm
	$(NPM_BIN)/buf breaking --against proto-baseline/released.binpb

## docker-compose.yml must stay valid; Debian's docker-compose checks it without an engine.
compose-check:
	@command -v docker-compose >/dev/null || { \
	  echo "installing docker-compose (Debian package) to validate docker-compose.yml"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose; }
	docker-compose config -q

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy choreo services tools tests examples/loyalty/acme_loyalty examples/travel/acme_travel

## The web console's browser test drives Debian's Chromium through chromedriver.
browser:
	@command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver (Debian packages) for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

## The docs site (mkdocs.yml, docs/) into site/; --strict: a broken link or reference fails.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

pytest: venv npm browser
	PATH="$(CURDIR)/$(BIN):$(CURDIR)/$(NPM_BIN):$$PATH" $(BIN)/pytest $(PYTEST_ARGS)

test: venv npm lint-proto breaking gen-check compose-check lint typecheck docs pytest

demo: venv
	$(BIN)/choreo demo

bench: venv
	$(BIN)/choreo bench

chaos: venv
	$(BIN)/choreo chaos --sagas 5000 --concurrency 32 --kills 50 --broker-restarts 3 --duration 600 --seed 2026

clean:
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache site
