# deepfake-serving: every task installs what it needs into .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# OpenMP threads of what make runs itself (torch in tests and benchmarks): the machine's 2 cores.
# Served workers take theirs from the threads rule (deepfake_serving/core/threads.py), whatever this says.
export OMP_NUM_THREADS ?= 2

.PHONY: install serve jobs monitor test test-fast lint bench archives grpc-stubs triton triton-configs loadtest docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[serve,triton,rollout,jobs,monitor,train,samples,load,dev]'
	# nginx for the rollout's split_clients (Debian's package, unpacked into the venv when not installed)
	command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || (cd $(VENV) && apt-get download nginx >/dev/null \
		&& dpkg -x nginx_*.deb nginx && rm -f nginx_*.deb) || echo "nginx unavailable: its tests will skip"
	# Redis for the job queue (Debian's redis-server: its binary is in redis-tools, with the two libraries it links)
	command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || (cd $(VENV) \
		&& apt-get download redis-server redis-tools libjemalloc2 liblzf1 >/dev/null \
		&& for deb in redis-server_*.deb redis-tools_*.deb libjemalloc2_*.deb liblzf1_*.deb; do dpkg -x $$deb redis; done \
		&& rm -f redis-server_*.deb redis-tools_*.deb libjemalloc2_*.deb liblzf1_*.deb)
	# Prometheus and Alertmanager for monitoring (Debian's packages: static Go binaries, unpacked into the venv)
	command -v prometheus >/dev/null || [ -x /usr/bin/prometheus ] || (cd $(VENV) \
		&& apt-get download prometheus prometheus-alertmanager >/dev/null \
		&& for deb in prometheus_*.deb prometheus-alertmanager_*.deb; do dpkg -x $$deb monitoring; done \
		&& rm -f prometheus_*.deb prometheus-alertmanager_*.deb)
	# Debian's Alertmanager reads its notification templates from /usr/share/prometheus/alertmanager only
	[ -f /usr/share/prometheus/alertmanager/default.tmpl ] || (mkdir -p /usr/share/prometheus/alertmanager \
		&& cp $(VENV)/monitoring/usr/share/prometheus/alertmanager/*.tmpl /usr/share/prometheus/alertmanager/) \
		|| echo "Alertmanager's templates cannot be installed: the monitoring tests will skip"
	# Chromium for the analyst page's browser test (Playwright drives Debian's; it downloads no browser)
	command -v chromium >/dev/null || apt-get install -y --no-install-recommends chromium >/dev/null \
		|| echo "chromium unavailable: the analyst page's browser test will skip"
	touch $(STAMP)

install: $(STAMP)

serve: install  ## build the demo archive, start TorchServe on loopback, print a real prediction
	$(VENV)/bin/deepfake-serving demo

jobs: install  ## beside `make serve`'s TorchServe: Redis, the job API on 127.0.0.1:8090 and one Celery worker
	$(VENV)/bin/deepfake-serving jobs

monitor: install  ## beside `make serve` (and `make jobs`): Prometheus on 127.0.0.1:9090 with the alert rules, Alertmanager on :9093
	$(VENV)/bin/deepfake-serving monitor

lint: install  ## ruff, the import contract (import-linter) and the type check (mypy), all configured in pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint  ## the whole suite: real TorchServe, Triton, nginx, Locust
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

test-fast: lint  ## the tests that start no server (a few minutes)
	$(PY) -m pytest -q -p no:cacheprovider -m "not server"

bench: install  ## TorchServe vs in-process throughput, RSS and cold start (prints a table)
	$(PY) benchmarks/bench_image.py

archives: install  ## demo archives (random weights, flagged untrained) for all five variants
	for v in b4-mobile b7-dfdc b4-keras-head b4-enhanced b4-ff; do \
		$(VENV)/bin/deepfake-serving archive --variant $$v --version 1.0 || exit 1; done

triton: install  ## build classifier version 1 (random weights unless CHECKPOINT=...) and serve b4-mobile on Triton
	$(VENV)/bin/deepfake-serving triton serve --variant $(or $(VARIANT),b4-mobile) $(if $(CHECKPOINT),--checkpoint $(CHECKPOINT))

triton-configs: install  ## regenerate model_repository/*/config.pbtxt and model.py from the variant registry
	$(PY) -c "from deepfake_serving.serving.launch.triton_repository import write_configs; write_configs()"

loadtest: install  ## Locust vs a demo server: make loadtest TARGET=torchserve-rest|torchserve-grpc|triton-http|triton-grpc [WORKERS=2]
	$(PY) loadtests/run.py --target $(or $(TARGET),torchserve-rest) --workers $(or $(WORKERS),0)

grpc-stubs: install  ## regenerate the committed stubs from TorchServe's own protos
	$(PY) -m deepfake_serving.serving.client.grpc_codegen

docs: install  ## regenerate the error tables of docs/schema.md from deepfake_serving/core/errors.py
	$(PY) -m deepfake_serving.core.errors docs/schema.md

clean:
	rm -rf runtime model_store/*.mar
