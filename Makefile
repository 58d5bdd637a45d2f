# shopsearch — the two commands of the quickstart are `make demo` and `make test`.
# Everything installs into .venv (pinned versions from pyproject.toml); run once per machine.

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
# Re-install when pyproject.toml changes.
STAMP  := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: install demo test test-fast lint typecheck clean es-start es-stop

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(STAMP)  ## create .venv and install shopsearch with its pinned dependencies

demo: install  ## build the sample catalog and serve it on 127.0.0.1:8000
	$(BIN)/shopsearch demo

lint: install
	$(BIN)/ruff check retrieval rerank indexer api eval tests
	$(BIN)/ruff format --check retrieval rerank indexer api eval tests

# mypy cannot follow the editable install's import hook (shopsearch.api is api/): it
# checks the package through a tree of links, build/mypy/shopsearch/<folder> -> <folder>.
typecheck: install
	@mkdir -p build/mypy/shopsearch
	@for p in retrieval rerank indexer api eval; do ln -sfn ../../../$$p build/mypy/shopsearch/$$p; done
	$(BIN)/mypy

# The whole suite, slow tests included, against a real Elasticsearch node that this
# target downloads (Maven Central, cached), starts, and always stops; the search page's
# browser tests get Debian's Chromium (.ci/chromium.sh installs it when missing).
# The scale-out tests get a 3-node cluster beside the single node (.ci/es-cluster.sh,
# started in parallel with it; both always stopped).
test: install lint typecheck
	@set -e; \
	.ci/chromium.sh; \
	trap 'wait; .ci/elasticsearch.sh stop || true; .ci/es-cluster.sh stop' EXIT; \
	.ci/elasticsearch.sh fetch; \
	.ci/es-cluster.sh start >/dev/null & cluster=$$!; \
	.ci/elasticsearch.sh start; \
	wait $$cluster; \
	SHOPSEARCH_ES_URL=$$(.ci/elasticsearch.sh url) \
	SHOPSEARCH_ES_CLUSTER_URLS=$$(.ci/es-cluster.sh urls) $(BIN)/python -m pytest

test-fast: install  ## unit tests only (no slow, no Elasticsearch)
	$(BIN)/python -m pytest -m 'not slow and not elasticsearch'

clean:
	rm -rf var build .pytest_cache .mypy_cache .ruff_cache
