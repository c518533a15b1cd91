# edgelm: `make demo` runs the main job, `make test` runs the tests. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Debian/Ubuntu packages by capability (`edgelm doctor` says the same, with macOS's lines), installed by
# .ci/apt-install: only the missing ones, without Recommends, no service started or left enabled.
APT_BUILD := g++-aarch64-linux-gnu make cmake
APT_EMULATED := $(APT_BUILD) qemu-user socat
APT_SSH := openssh-client
APT_IMAGE := qemu-system-arm e2fsprogs faketime openssh-client
APT_ARM := gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm cmake
APT_TEST := g++ clang libclang-rt-dev openssh-server chromium ser2net
APT_PACKAGES := $(sort $(APT_EMULATED) $(APT_SSH) $(APT_IMAGE) $(APT_ARM) $(APT_TEST))
STAMP := $(VENV)/.edgelm-setup

FUZZ_SECONDS ?= 60
FUZZ_MAX_LEN ?= 512

.PHONY: setup setup-export setup-emulated setup-ssh setup-image setup-arm setup-test apt demo demo-model test test-fast lint fuzz bench bench-quality clean

# `make setup` (= setup-test): everything `make test` and `make demo` need. The others, by capability:
# export only (pip alone), emulated boards, SSH boards, board images, Arm NPU boards.
setup: $(STAMP)
setup-test: setup

define venv
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.$(1)'
endef

setup-export:
	$(call venv,)
setup-emulated:
	.ci/apt-install $(APT_EMULATED)
	$(call venv,)
setup-ssh:
	.ci/apt-install $(APT_SSH) $(APT_BUILD)
	$(call venv,)
setup-image:
	.ci/apt-install --arch arm64 $(APT_IMAGE) $(APT_BUILD)
	$(call venv,)
setup-arm:
	.ci/apt-install $(APT_ARM)
	$(call venv,[arm])
	$(BIN)/python -m pip install -q --no-deps tosa-tools==2026.8.0

# Debian packages: the aarch64 cross-compiler and user-mode QEMU (the emulated boards); clang and
# libclang-rt-dev (libFuzzer's runtime) for `make fuzz` and tests/fuzz/test_libfuzzer.py; the OpenSSH
# client (ssh targets) and server (tests/sshd.py runs its own throwaway sshd on 127.0.0.1: the system's
# ssh service is neither started nor left enabled by .ci/apt-install). The board image (`edgelm image`, the qemu-system
# target) is made of Debian's arm64 packages (kernel, busybox-static, dropbear), downloaded by apt once
# the arm64 architecture is added; it boots under qemu-system-arm's qemu-system-aarch64, its data disk
# is made by e2fsprogs' mke2fs under faketime (fixed timestamps: the same inputs give the same bytes).
# chromium: the test of `edgelm run --report` opens the HTML report headless and reads its screenshot.
# ser2net: labgrid's exporter serves a farm board's serial port with it (tests/labgrid_farm.py starts
# a coordinator and exporters on 127.0.0.1; the system's ser2net service is left off as sshd's).
# gcc-arm-none-eabi and libnewlib-arm-none-eabi: the Cortex-M firmware of the Arm NPU boards
# (corstone-300/320) is compiled with them; its self-test runs on qemu-system-arm's mps3-an547.
# Linking the ExecuTorch runner for Cortex-M also needs libstdc++-arm-none-eabi-newlib (1.5 GB
# installed) and ExecuTorch built for Cortex-M, neither of which the tests need.
apt:
	@.ci/apt-install --arch arm64 $(APT_PACKAGES)

$(STAMP): pyproject.toml | apt
	$(MAKE) apt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: the CPU build, taken from this machine's disk.
	$(BIN)/python -m pip install -q -e '.[dev]'
	# labgrid's pyserial fork and pyserial install the same `serial` package: the fork, last, wins.
	$(BIN)/python -m pip install -q --force-reinstall --no-deps pyserial-labgrid==3.5.0.2
	# The TOSA reference model (the Arm export's numerical check). tosa-tools pins numpy<2.2 and
	# flatbuffers==25.2.10, which would downgrade what torch and executorch use; its model runs with
	# these (checked bit-exact in tests/integration/test_arm_export.py), so it goes in without its pins
	# (its other dependencies come with the `arm` extra). `pip check` names those two pins.
	$(BIN)/python -m pip install -q --no-deps tosa-tools==2026.8.0
	touch $(STAMP)

# The main job: export the shipped `fortune` model, build the firmware for a Raspberry Pi 5, run it
# on an emulated Pi 5 (qemu-aarch64 -cpu cortex-a76), stream the tokens over a serial link, validate.
# 8da8w: on this small model int4 weights change a quarter of the greedy picks (BENCHMARKS.md, quality).
DEMO_PROMPT ?= A wise old owl
# The program carries fortune-draft too: the board drafts with it and fortune verifies (DEMO_DRAFT= for none).
DEMO_QUANT ?= 8da8w
DEMO_DRAFT ?= fortune-draft
demo: setup
	$(BIN)/edgelm run --board rpi5 --target qemu --model fortune --quant $(DEMO_QUANT) --prompt "$(DEMO_PROMPT)" \
	  $(if $(DEMO_DRAFT),--draft-model $(DEMO_DRAFT))

# Then an outside project's hardware-in-the-loop tests (examples/hil) on the emulated Pi 5, through
# the pytest plugin; --edgelm-require turns a board it cannot reach into a failure, not a skip.
test: setup
	$(BIN)/python -m pytest -ra
	$(BIN)/python -m pytest -ra examples/hil --edgelm-board rpi5 --edgelm-target qemu --edgelm-require

test-fast: setup
	$(BIN)/python -m pytest -ra -m "not slow and not hil"

lint: setup
	$(BIN)/ruff check toolchain tests benchmarks examples
	$(BIN)/mypy

# Coverage-guided fuzzing (libFuzzer + ASan + UBSan) of the runner's frame reader and REQUEST
# parser for FUZZ_SECONDS, on a scratch copy of firmware/fuzz/corpus/; a crash exits non-zero.
fuzz: apt
	firmware/fuzz/fuzz.sh $(FUZZ_SECONDS) $(FUZZ_MAX_LEN)

# Speed against ExecuTorch's own LLM path (export_llm + TextLLMRunner) and llama.cpp (llama-cpp-python
# built from its sdist in its own venv under ~/.cache/edgelm/bench), in one run on this machine: up to
# an hour. Writes benchmarks/results/<date>-<host>.json, BENCHMARKS.md and its chart. Not part of `test`.
BENCH_ARGS ?=
bench: setup
	$(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

# Quantization quality of every scheme on the shipped `fortune` model (a few minutes; not part of `make test`).
bench-quality: setup
	$(BIN)/python benchmarks/quality.py

# Train the shipped `fortune` model and its draft model `fortune-draft` again (not part of `make test`;
# about 25 + 8 minutes on 2 cores): the corpus is Debian's fortunes package, the recipes and seed are
# in toolchain/model/train.py.
demo-model: setup
	@SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); dpkg -s fortunes >/dev/null 2>&1 || \
	  { echo "installing Debian's fortunes package (the corpus)"; $$SUDO apt-get update -qq; \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq fortunes; }
	$(BIN)/python -m toolchain.model.train --out models/fortune
	$(BIN)/python -m toolchain.model.train --recipe fortune-draft --out models/fortune-draft

clean:
	rm -rf out build .pytest_cache examples/hil/.pytest_cache
