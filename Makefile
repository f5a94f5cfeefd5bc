# Everything sets itself up: `make demo` and `make test` work on a fresh machine and are
# idempotent (the venv is rebuilt only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# Debian packages the tests run for real: a broker for the MQTT uplink, a browser for the
# gateway's status page, openssl for the TLS tests' certificates, fish for the completion
# script's test, PostgreSQL for `roadside ingest` (the tests initdb a throwaway cluster of
# their own; Debian keeps initdb in /usr/lib/postgresql/VERSION/bin, off PATH). Installed only
# when missing (root, or sudo without a password). A test whose program is missing is skipped,
# and fails under CI=true (tests/support/system.py); the ingest tests fail without initdb
# anywhere (tests/support/postgres.py).
APT_PACKAGES := mosquitto chromium chromium-driver openssl fish postgresql
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)

.PHONY: demo test lint test-only system-deps bench reliability wheel clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/roadside demo

system-deps:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v fish >/dev/null || missing="$$missing fish"; \
	command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
	  || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing >/dev/null \
	  || echo "warning: could not install$$missing; the tests that need them will be skipped" \
	          "(under CI=true they fail)"; \
	fi

# The firmware is checked against MicroPython's stubs, which live in the venv's site-packages
# (whatever its Python version): they replace CPython's typeshed (firmware/mypy.ini says why).
# The host code is checked as the installed packages roadside.gateway and roadside.tools,
# linked under build/typecheck (pyproject.toml [tool.mypy] says why).
SITE = $(shell $(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')

lint: $(STAMP)
	$(BIN)/ruff check gateway tools tests bench
	MYPYPATH=firmware:$(SITE)/stdlib:$(SITE) $(BIN)/mypy --config-file firmware/mypy.ini \
	  --custom-typeshed-dir $(SITE) firmware
	mkdir -p build/typecheck/roadside
	ln -sfn ../../../gateway build/typecheck/roadside/gateway
	ln -sfn ../../../tools build/typecheck/roadside/tools
	$(BIN)/mypy -p roadside.gateway -p roadside.tools

test: lint system-deps test-only

test-only: $(STAMP)
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/python bench/run_all.py

# Power cuts at every write of a node's flash, in full (docs/RELIABILITY.md)
reliability: $(STAMP)
	$(BIN)/python bench/bench_power_cut.py --recovery

# dist/roadside-*.whl: the tools, gateway, firmware, boards and scenarios (README.md, "Installing
# roadside from the wheel"). build/lib goes first: setuptools would pack files left there by
# an older build.
wheel: $(STAMP)
	rm -rf build/lib dist
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache
