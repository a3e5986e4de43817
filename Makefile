# The two set-up commands of the README:
#   make demo   install, then run the whole pipeline locally (limaml demo): a Kafka broker, the
#               workers and the scoring service on a replay of the built-in synthetic log,
#               with a model trained first if none fits; it scores one member and stops
#   make test   install, then run every test (a real Kafka broker and Redis server are
#               started for them; Debian's redis-server is installed when it is missing,
#               and `docker compose` is built once from the Go module proxy when missing)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "limaml needs Python 3.11 or newer"'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: install
	bash deploy/kafka.sh fetch
	$(BIN)/limaml demo --dataset synthetic --artifacts-dir artifacts

# pytest exits 5 when it collects no test: that is a failure here, not a pass.
test: install
	bash deploy/kafka.sh fetch
	bash deploy/redis.sh install
	bash deploy/compose.sh install
	$(BIN)/python -m pytest; status=$$?; \
	  if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

bench: install
	$(BIN)/python bench/adapt_throughput.py --quick

clean:
	rm -rf $(VENV) .pytest_cache artifacts
