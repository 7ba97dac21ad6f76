# The README's two commands. Each does all its own set-up.
.PHONY: demo test setup fuzz-smoke

setup:
	@scripts/setup-libtorch.sh

# SADA-JEM on the bundled Fashion-MNIST: train, evaluate, report → runs/demo (replacing an
# earlier demo); prints the summary table.
demo: setup
	scripts/demo.sh

# The unit and end-to-end tests, then the browser test on the report the end-to-end eval test
# leaves in target/test-artifacts/ (a shortened budget: a 1-epoch SADA-JEM run on 1,000 images).
test: setup
	cargo test --no-fail-fast 2>&1
	scripts/browser-test.sh target/test-artifacts/eval-run/report.html target/test-artifacts

# Every fuzz target (fuzz/: dataset readers, checkpoint files, config, torch.save files) for FUZZ_SECONDS each from
# its committed seeds; CI runs it after the tests. Installs cargo-fuzz once. No libtorch needed.
FUZZ_SECONDS ?= 15
fuzz-smoke:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
	fuzz/run.sh $(FUZZ_SECONDS)
