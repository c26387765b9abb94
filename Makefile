# Two commands do all the set-up on a fresh machine:
#   make run    serve DICOMweb on http://127.0.0.1:7071/dicomweb with the embedded defaults
#   make test   run the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

NODE_STAMP := node_modules/.installed

.PHONY: run run-azurite test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Azurite (Azure Storage emulator) for the Azure backend tests; skipped quietly without npm.
$(NODE_STAMP): package.json package-lock.json
	if command -v npm >/dev/null; then npm ci --no-audit --no-fund --loglevel=error && touch $(NODE_STAMP); fi

run: $(STAMP)
	$(BIN)/python -m devhost

# The same server on Azurite: blobs in Azure Blob Storage and the index in Azure Table Storage
# (INDEX=sql keeps the index in SQLite; DICOMWEB_INDEX_URL=postgresql://... puts it in PostgreSQL).
AZURITE_CONN := UseDevelopmentStorage=true
run-azurite: $(STAMP) $(NODE_STAMP)
	mkdir -p .azurite
	node_modules/.bin/azurite --silent --disableTelemetry --skipApiVersionCheck --location .azurite \
	  --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 & AZURITE=$$!; \
	trap "kill $$AZURITE" EXIT INT TERM; sleep 2; \
	DICOMWEB_BLOB_STORE=azure DICOMWEB_INDEX=$${INDEX:-table} AzureWebJobsStorage="$(AZURITE_CONN)" \
	  $(BIN)/python -m devhost

test: $(STAMP) $(NODE_STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m bench --baseline orthanc --rounds 3

clean:
	rm -rf $(VENV) node_modules .data .azurite .pytest_cache .mypy_cache .ruff_cache
