# The README's two commands. Each does all its own set-up.
.PHONY: demo test setup fuzz-smoke setup-cuda build-cuda gpu-check-dry-run lint

# libtorch, and the FID Inception network in weights/ (both idempotent, silent once done).
setup:
	@scripts/setup-libtorch.sh
	@scripts/setup-inception.sh

# The CUDA build (README, "GPU"), on any machine, no GPU needed: torch 2.11.0's CUDA 13 wheel
# and its NVIDIA runtime wheels in libtorch-cuda/ (~3.5 GB download), a binary linked against
# them (libtorch_cuda, NCCL) in target-cuda/release/, and its stripped copy target-cuda/bin/sadajem
# (the same depth, so its $ORIGIN rpath finds libtorch-cuda/ too),
# the one scripts/gpu-check.sh carries to a GPU machine.
setup-cuda:
	@scripts/setup-libtorch.sh --cuda

build-cuda: setup-cuda
	LIBTORCH=$(CURDIR)/libtorch-cuda/torch LIBTORCH_CXX11_ABI=1 CARGO_TARGET_DIR=target-cuda \
	  RUSTFLAGS='-C link-args=-Wl,-rpath,$$ORIGIN/../../libtorch-cuda/torch/lib' cargo build --release
	mkdir -p target-cuda/bin && strip -o target-cuda/bin/sadajem.tmp target-cuda/release/sadajem && mv target-cuda/bin/sadajem.tmp target-cuda/bin/sadajem
	@ls -l target-cuda/bin/sadajem

# scripts/gpu-check.sh's steps on this machine's CPU with tiny sizes (CI runs it after the tests).
gpu-check-dry-run: setup
	scripts/gpu-check.sh --dry-run target/gpu-check

# SADA-JEM on the bundled Fashion-MNIST: train, evaluate, report → runs/demo (replacing an
# earlier demo); prints the summary table.
demo: setup
	scripts/demo.sh

# The unit and end-to-end tests, then the browser test on the pages the end-to-end tests leave
# in target/test-artifacts/: the eval test's report (a 1-epoch SADA-JEM run on 1,000 images) and
# the study test's comparison (two 2-epoch runs, each epoch's checkpoint evaluated).
test: setup
	cargo test --no-fail-fast 2>&1
	scripts/browser-test.sh target/test-artifacts/eval-run/report.html target/test-artifacts
	scripts/browser-test.sh target/test-artifacts/compare/compare.html target/test-artifacts 3 summary tables curves

# The hygiene gates CI runs after the tests: formatting (rustfmt.toml) and clippy, warnings as errors.
lint: setup
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

# Every fuzz target (fuzz/: dataset readers, checkpoint files, config, torch.save files) for FUZZ_SECONDS each from
# its committed seeds; CI runs it after the tests. Installs cargo-fuzz once. No libtorch needed.
FUZZ_SECONDS ?= 15
fuzz-smoke:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
	fuzz/run.sh $(FUZZ_SECONDS)
