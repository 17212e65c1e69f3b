# fastdist developer targets. `make check` is exactly what CI runs (.ci/run).
VENV   := .venv
PY     := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: dev setup build fmt fmt-check lint typecheck test test-rust test-python check wheel-test demo bench bench-far bench-micro fuzz fuzz-rust clean

# `make setup` always runs the whole set-up (system packages, venv, extension). The other targets
# depend on its stamp instead, so `make test` on a set-up tree does not rerun apt and pip; the
# extension is rebuilt when a Rust source, a Cargo manifest or the maturin config is newer than it.
SETUP_STAMP := $(VENV)/.fastdist-setup
NATIVE      := python/fastdist/_native.abi3.so
RUST_INPUTS := $(shell find rust -path rust/fuzz -prune -o \( -name '*.rs' -o -name Cargo.toml \) -print 2>/dev/null) \
               $(wildcard Cargo.toml Cargo.lock) pyproject.toml

setup:            ## install system packages, the venv and build the extension
	scripts/setup.sh
	@touch $(SETUP_STAMP) $(NATIVE)

$(SETUP_STAMP): scripts/setup.sh scripts/apt-ensure.sh
	scripts/setup.sh
	@touch $@ $(NATIVE)

$(NATIVE): $(SETUP_STAMP) $(RUST_INPUTS)
	VIRTUAL_ENV=$(CURDIR)/$(VENV) $(VENV)/bin/maturin develop --release -q
	@touch $@

dev build: $(NATIVE)

fmt:              ## format Rust and Python
	cargo fmt --all
	$(PY) -m ruff format python tests benches examples
	$(PY) -m ruff check --fix python tests benches examples

fmt-check:
	cargo fmt --all -- --check
	$(PY) -m ruff format --check python tests benches examples

lint:
	cargo clippy --all-targets --release -- -D warnings
	$(PY) -m ruff check python tests benches examples

typecheck:
	$(PY) -m mypy
	$(PY) -m mypy.stubtest fastdist._native --allowlist tests/stubtest-allowlist.txt

test-rust:
	cargo test --release

test-python:
	$(PY) -m pytest -q tests

test: $(NATIVE) test-rust test-python   ## all tests (Rust and Python: unit, conformance, integration, e2e)

check: $(NATIVE) fmt-check lint typecheck test-rust test-python wheel-test   ## what CI runs

wheel-test:       ## build the abi3 wheel, install it in a fresh venv, run the demo end to end from it
	rm -rf target/wheel-test && $(VENV)/bin/maturin build --release -q -o target/wheel-test/dist
	python3 -m venv target/wheel-test/venv
	target/wheel-test/venv/bin/pip install -q --disable-pip-version-check target/wheel-test/dist/*.whl
	cd target/wheel-test && PATH="$(CURDIR)/target/wheel-test/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
		venv/bin/python $(CURDIR)/examples/demo.py

demo: $(NATIVE)       ## end to end: local registry + demo image, pull with live display, images, run
	$(PY) examples/demo.py

bench: $(NATIVE)      ## pull benchmarks against ctr and skopeo+umoci (see benches/README.md)
	$(PY) benches/pull.py

bench-far: $(NATIVE)  ## far-link sweep through benches/linkem.py (~20-25 min; see benches/README.md)
	$(PY) benches/pull.py --link far

bench-micro: $(NATIVE)
	$(PY) benches/micro.py

FUZZ_SECONDS ?= 60
fuzz: $(NATIVE)       ## each fuzz target for FUZZ_SECONDS (atheris, then cargo-fuzz); crashes land in fuzz/crashes/<target>/ and rust/fuzz/artifacts/<target>/
	$(PY) -m pip install --quiet 'atheris>=2.3'
	@mkdir -p fuzz/crashes/manifest fuzz/crashes/layer fuzz/corpus/manifest fuzz/corpus/layer
	$(PY) fuzz/fuzz_manifest.py -max_total_time=$(FUZZ_SECONDS) -timeout=10 \
		-artifact_prefix=fuzz/crashes/manifest/ fuzz/corpus/manifest
	$(PY) fuzz/fuzz_layer.py -max_total_time=$(FUZZ_SECONDS) -timeout=30 -rss_limit_mb=2048 \
		-artifact_prefix=fuzz/crashes/layer/ fuzz/corpus/layer
	$(PY) -m pytest -q tests/unit/test_fuzz_regressions.py
	$(MAKE) fuzz-rust FUZZ_SECONDS=$(FUZZ_SECONDS)

# cargo-fuzz on stable Rust: RUSTC_BOOTSTRAP=1 lets stable rustc take the -Z sanitizer and
# coverage flags cargo-fuzz passes. CRATE_CC_NO_DEFAULTS=1 stops the cc crate from adding
# -fsanitize=address to C code (isa-l's configure links its test program -static, which gcc
# refuses with ASan), so C dependencies are built plain with CFLAGS; the Rust code has ASan
# and libFuzzer coverage.
# `-O -a`: optimised, with debug assertions and overflow checks, so that a size sum that would
# silently wrap in a release build panics under the fuzzer instead.
RUST_FUZZ_TARGETS := apply_layer apply_compressed decompress tar_reader
CARGO_FUZZ_ENV := RUSTC_BOOTSTRAP=1 CRATE_CC_NO_DEFAULTS=1 CFLAGS="-O2 -fPIC"
fuzz-rust:        ## cargo-fuzz targets of the Rust core for FUZZ_SECONDS each, then the replay tests
	command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
	cargo run --quiet --release --manifest-path rust/fuzz/Cargo.toml --bin seed_corpus -- rust/fuzz/corpus
	cd rust && failed=; for t in $(RUST_FUZZ_TARGETS); do \
		$(CARGO_FUZZ_ENV) cargo fuzz run -O -a $$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 || failed="$$failed $$t"; \
	done; \
	cargo test --release --manifest-path fuzz/Cargo.toml || failed="$$failed replay"; \
	if [ -n "$$failed" ]; then echo "fuzz-rust failed:$$failed (inputs in rust/fuzz/artifacts/)"; exit 1; fi

clean:
	rm -rf target .venv .mypy_cache .ruff_cache .pytest_cache
