# The README's two commands. Each does all its own set-up.
.PHONY: demo test setup

setup:
	@scripts/setup-libtorch.sh

# Trains the quick CPU demo on the bundled Fashion-MNIST into runs/demo (replacing an earlier demo).
demo: setup
	cargo build --release --quiet
	rm -rf runs/demo
	target/release/sadajem train --preset softmax-fashion --run-dir runs/demo

test: setup
	cargo test --no-fail-fast 2>&1
