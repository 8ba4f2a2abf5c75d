# orthoserve: `make serve` to run the server on the default model, `make test` to run the test suite.
VENV ?= $(CURDIR)/.venv
export VENV
SERVE_ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers for the test modules: 0 runs serially. With several, the modules on the shared
# test server run together on one worker (tests/conftest.py), and each worker starts its own engines.
TEST_WORKERS ?= 0

.PHONY: setup setup-dev serve prepare-model test image-check

setup:
	scripts/install.sh cpu

setup-dev:
	scripts/install.sh cpu --dev --with-prometheus --with-podman

serve: setup
	$(VENV)/bin/orthoserve serve $(SERVE_ARGS)

prepare-model: setup
	$(VENV)/bin/orthoserve prepare-model

# pytest exits 5 when it collects no tests: that is a failure too, like any other non-zero code.
# The image check runs after pytest whatever pytest's result; either failing fails the target.
test: setup-dev
	@status=0; $(VENV)/bin/python -m pytest tests/ -n $(TEST_WORKERS) --no-loadscope-reorder --durations=20 $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	$(MAKE) --no-print-directory image-check || { [ $$status -ne 0 ] || status=1; }; \
	exit $$status

# Builds docker/Dockerfile.cpu with Podman and runs it: API, admin API, metrics, Prometheus.
image-check: setup-dev
	scripts/image-check.sh
