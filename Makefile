# Two commands set everything up: `make demo` and `make test`. Both are idempotent.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo demo-detection test venv data slurm bench clean-demo sparseml-commands kernels

venv: $(STAMP)

# requirements.txt, then this checkout itself (pyproject.toml), editable: its packages import from anywhere and
# SparseML's command names (sparseml.image_classification.train, ...) land in $(VENV)/bin.
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install -qq --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The sparse engine's compiled kernels (utils/onnx/kernels): plain C with OpenMP, AVX-512 / AVX2 chosen at run time.
# Without a C compiler this says so in one line and everything else still works (the other engines run).
KERNELS := utils/onnx/kernels/build/libsparse_conv.so
CC ?= cc
kernels: $(KERNELS)

KERNEL_SOURCES := utils/onnx/kernels/sparse_conv.c utils/onnx/kernels/sparse_qconv.c
$(KERNELS): $(KERNEL_SOURCES) utils/onnx/kernels/sparse_conv.h
	@mkdir -p $(dir $@)
	@if ! command -v $(CC) >/dev/null 2>&1; then \
	  echo "no C compiler ($(CC)): the sparse engine is off (apt-get install gcc, then make kernels)"; \
	elif $(CC) -O3 -fopenmp -fPIC -shared -o $@.tmp $(KERNEL_SOURCES) -lm; then mv $@.tmp $@; \
	else rm -f $@.tmp; echo "the sparse kernels did not build with $(CC) (above): the sparse engine is off"; fi

# Debian's dataset-fashion-mnist package: installed when apt is available and the files are missing.
data:
	@if [ ! -f $(FASHION_MNIST) ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's dataset-fashion-mnist"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	  else \
	    echo "Fashion-MNIST missing: run 'sudo apt-get install dataset-fashion-mnist' (files go to $(dir $(FASHION_MNIST)))"; \
	  fi; \
	fi

# Debian's Slurm (slurmctld, slurmd, munge) for the tests that run studies on a real one-node cluster
# (tests/slurm/cluster.sh starts one in a temporary folder): installed when apt is available and we are root.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
slurm:
	@if ! command -v sbatch >/dev/null 2>&1 || [ ! -x /usr/sbin/slurmd ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's Slurm for the Slurm tests ($(SLURM_PACKAGES))"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      $(SLURM_PACKAGES) >/dev/null; \
	  else \
	    echo "Slurm missing: the Slurm tests will say so and not run (sudo apt-get install $(SLURM_PACKAGES))"; \
	  fi; \
	fi

demo: venv data kernels
	$(PY) -m utils.studies

# The detection leg: YOLO data pasted from Fashion-MNIST, a yolov5n upstream, GMP 80/90%, seed-001 sparse transfer.
demo-detection: venv data kernels
	$(PY) -m utils.studies --study configs/studies/demo_detection.yaml

# style by check, not habit: ruff (line length, import order, pyflakes; pyproject.toml) before the suite.
# The suite runs one pytest-xdist worker per core, each with one BLAS/OpenMP thread: most of its time is
# commands started as subprocesses (about 4 s of importing torch each), which then share the cores instead
# of waiting in turn (measured 3.6-3.9 min against 5.6 in one process on 2 cores with 904 tests; workers left at 2 threads each
# ran slower than one process; work-stealing keeps both busy to the end: 3.7 min against 3.9 with its default).
# A test's command that sets its own thread count above one shares a core with the other worker: the notebook's
# fixed two threads made its training 58x slower (113 s); with 946 tests 3.3 min, 4.8 from a fresh clone. The Slurm
# tests (tests/slurm: a real one-node cluster, mostly waiting on its jobs) added 0.8-1.1 min: 950 tests 4.1-4.4 min,
# 5.9-6.1 from a fresh clone (Slurm already installed).
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)
test: venv data kernels slurm
	$(PY) -m ruff check --quiet .
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal

bench: venv kernels
	$(PY) bench/masked_step.py
	$(PY) bench/linear_probe.py
	$(PY) bench/extract.py
	$(PY) bench/deploy.py
	$(PY) bench/sparse_kernels.py
	$(PY) bench/detect.py

# SparseML's command names are console scripts of the package (pyproject.toml), installed by `make venv`;
# this lists them (it used to write them).
sparseml-commands: venv
	@ls $(VENV)/bin/sparseml.*

clean-demo:
	rm -rf experiments/demo experiments/demo_* experiments/demo_detection
