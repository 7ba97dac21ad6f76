# The README's two commands. Each does all its own set-up.
.PHONY: demo test setup fuzz-smoke

setup:
	@scripts/setup-libtorch.sh

# Trains the quick CPU demo on the bundled Fashion-MNIST into runs/demo (replacing an earlier demo).
demo: setup
	cargo build --release --quiet
	rm -rf runs/demo
	target/release/sadajem train --preset softmax-fashion --run-dir runs/demo

test: setup
	cargo test --no-fail-fast 2>&1

# Every fuzz target (fuzz/: dataset readers, checkpoint files, config) for FUZZ_SECONDS each from
# its committed seeds; CI runs it after the tests. Installs cargo-fuzz once. No libtorch needed.
FUZZ_SECONDS ?= 15
fuzz-smoke:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
	fuzz/run.sh $(FUZZ_SECONDS)
