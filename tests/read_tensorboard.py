"""Reads a directory of TensorBoard event files with TensorBoard's own reader and prints what it
holds as one JSON line: {"scalars": {tag: [[step, value], ...]}, "images": {tag: [[step, width,
height, png_bytes, is_png], ...]}}. The tests (tests/cli.rs) compare it with the run directory.

    python3 tests/read_tensorboard.py RUN/tensorboard

TensorBoard's reader checks both CRCs of every record and drops the rest of a file at the first
bad one, so a framing mistake shows as missing events. If `tensorboard` cannot be imported, a
venv is made at target/tensorboard-venv with tensorboard 2.20.0 (from PyPI; ~40 MB with its
dependencies); where that fails this exits with status 77 and says why (the tests then skip).
"""
import fcntl, json, os, subprocess, sys
from pathlib import Path

SKIP = 77


def bootstrap():
    root = Path(__file__).resolve().parent.parent
    venv = root / "target" / "tensorboard-venv"
    py = venv / "bin" / "python"
    if os.environ.get("SADAJEM_TENSORBOARD_VENV"):  # already re-run once: do not loop
        print(f"skip: tensorboard is still not importable with {py}", file=sys.stderr)
        sys.exit(SKIP)
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Tests run side by side: one of them makes the venv, the others wait for it.
    with open(venv.parent / ".tensorboard-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ok = py.exists() and subprocess.run([str(py), "-c", "import tensorboard"], capture_output=True).returncode == 0
        if not ok:
            print(f"bootstrap: creating {venv} with tensorboard 2.20.0", file=sys.stderr)
            steps = [
                [sys.executable, "-m", "venv", "--clear", str(venv)],
                [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "tensorboard==2.20.0"],
            ]
            for cmd in steps:
                r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"))
                if r.returncode != 0:
                    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no output"]
                    print(f"skip: cannot make the tensorboard venv ({' '.join(cmd[:3])}: {tail[0]})", file=sys.stderr)
                    sys.exit(SKIP)
    os.execve(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]], dict(os.environ, SADAJEM_TENSORBOARD_VENV="1"))


try:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
except ImportError:
    bootstrap()

acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0, "images": 0})
acc.Reload()
tags = acc.Tags()
print(json.dumps({
    "scalars": {t: [[e.step, e.value] for e in acc.Scalars(t)] for t in tags["scalars"]},
    "images": {
        t: [[e.step, e.width, e.height, len(e.encoded_image_string), e.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"]
            for e in acc.Images(t)]
        for t in tags["images"]
    },
}))
