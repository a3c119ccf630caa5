# Snapread: `make run` starts the whole stack here; `make test` runs every suite.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
# The stamp's name carries a hash of every requirements file, so a changed pin reinstalls
# and an unchanged one does not, whatever the files' dates (a fresh clone is all new).
# .ci/run computes the same name for its cached virtualenv.
REQUIREMENTS_HASH := $(shell cat requirements/*.txt | sha256sum | cut -c1-16)
STAMP := $(VENV)/.installed-$(REQUIREMENTS_HASH)
APT_PACKAGES := $(shell grep -hvE '^\s*(\#|$$)' requirements/apt.txt requirements/apt-dev.txt)

.PHONY: install run test lint bench system-packages

install: $(STAMP) system-packages

$(STAMP):
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -r requirements/dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo"; \
	else echo "Missing system packages. Install them with:"; \
	  echo "  sudo apt-get install -y$$missing"; exit 0; fi; \
	echo "Installing system packages:$$missing"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends$$missing >/dev/null

run: install
	$(PYTHON) -m project.devstack

# PYTEST_STATUS_FILE (set by .ci/run) receives pytest's own exit code: make's is always 2.
test: install
	@status=0; $(PYTHON) -m pytest $(PYTEST_ARGS) || status=$$?; \
	if [ -n "$(PYTEST_STATUS_FILE)" ]; then echo $$status > "$(PYTEST_STATUS_FILE)"; fi; \
	exit $$status

# The service against its own ceiling and the naive design: bench/results/latest.json,
# and a row in docs/benchmarks.md. BENCH_ARGS passes options (python -m bench.e2e -h).
bench: install
	$(PYTHON) -m bench.e2e $(BENCH_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
