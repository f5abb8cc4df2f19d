# The two commands a newcomer needs:  make up  (run agentmesh)   make test  (run every test).
# Both create or reuse .venv, install agentmesh into it, and generate what must be generated.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test lint generate check-generated bench bench-langgraph clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

# Code is generated again only when a proto, the generator or the installed tools changed (the
# stamp's time), not on every `make up`.
PROTOS := $(shell find protos -name '*.proto')
GENERATED := $(VENV)/.generated

$(GENERATED): $(STAMP) $(PROTOS) scripts/generate.py
	$(BIN)/python scripts/generate.py
	touch $@

# The generator copies these for buf and protoc with their packaged (old) times: touched, so that
# they count as current after the stamp; generated again if they went missing.
third_party/google/api/annotations.proto: $(GENERATED)
	test -f $@ || $(BIN)/python scripts/generate.py
	touch $@

# Regenerates generated/ from protos/ (and third_party/ from googleapis-common-protos).
generate: $(STAMP)
	$(BIN)/python scripts/generate.py

up: $(STAMP) $(GENERATED)
	$(BIN)/agentmesh up

# CI runs this (.ci/run). Starts PostgreSQL and Redis when installed but stopped.
test: $(STAMP) check-generated lint
	scripts/ensure-services.sh
	$(BIN)/pytest
	# The Redis-using suites again on a three-master Redis Cluster of their own: conversation, agents
	# and identity whole (about 40 s); of orchestration the modules that exercise Redis (runs, leases
	# and the sweeper, Chat's session streams, Redis losing its keys, tool waits across instances,
	# busy policies), and the system story on production processes. Measured on 2 shared cores,
	# minutes apart: those 26 orchestration tests 60 s, the whole orchestration suite 117-139 s (229 s
	# under heavier load), the story 86 s; the other orchestration modules repeat the same Redis paths.
	AGENTMESH_TEST_REDIS_MODE=cluster $(BIN)/pytest tests/conversation tests/agents tests/identity \
		tests/orchestration/test_runs.py tests/orchestration/test_chat.py \
		tests/orchestration/test_redis_loss.py tests/orchestration/test_tool_waits.py \
		tests/orchestration/test_policies.py tests/system/test_story.py

lint: $(STAMP) third_party/google/api/annotations.proto
	$(BIN)/buf lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Fails when protos/ and generated/ disagree.
check-generated: $(STAMP)
	$(BIN)/python scripts/generate.py
	git diff --exit-code --stat -- generated || (echo "generated/ is stale: run 'make generate' and commit" && exit 1)
	test -z "$$(git status --porcelain -- generated)" || (git status --porcelain -- generated; echo "generated/ has files git does not track: run 'make generate' and commit" && exit 1)

bench: $(STAMP)
	$(BIN)/python -m bench

# The LangGraph Agent Server that bench/chat_load.py compares against, in a virtualenv of its own
# (its pins conflict with agentmesh's: pyproject.toml's langgraph-bench dependency group).
bench-langgraph: $(STAMP)
	test -x .venv-langgraph/bin/python || $(PYTHON) -m venv --without-pip .venv-langgraph
	$(BIN)/pip --python .venv-langgraph/bin/python install --quiet --group langgraph-bench

clean:
	rm -rf $(VENV) third_party .pytest_cache
