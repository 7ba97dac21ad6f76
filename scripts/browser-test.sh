#!/usr/bin/env bash
# Opens a run's report.html in headless Chromium (Debian's package, installed when absent),
# keeps a screenshot as a test artefact, and checks that the page rendered: every section is
# there, tables are present, and every embedded image decoded.
#
#   scripts/browser-test.sh RUN_DIR/report.html [OUT_DIR]
set -euo pipefail
report=$(realpath "$1")
out=${2:-target/test-artifacts}
mkdir -p "$out"

if ! command -v chromium >/dev/null; then
  echo "browser test: installing Debian's chromium (once)"
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi

profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# This machine's network is closed: no background connections, no sandbox (root in CI).
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$profile" --virtual-time-budget=5000)
chromium "${flags[@]}" --window-size=1280,3000 --screenshot="$out/report.png" "file://$report" 2>/dev/null
chromium "${flags[@]}" --dump-dom "file://$report" 2>/dev/null > "$out/report-dom.html"

fail() { echo "browser test: FAILED: $*"; exit 1; }
[ -s "$out/report.png" ] || fail "no screenshot"
for section in summary training evaluation config timing; do
  grep -q "<section id=\"$section\">" "$out/report-dom.html" || fail "section $section missing"
done
tables=$(grep -o "<table>" "$out/report-dom.html" | wc -l)
[ "$tables" -ge 3 ] || fail "only $tables tables"
images=$(grep -o 'data-images-ok="[0-9]*/[0-9]*"' "$out/report-dom.html" | grep -o '[0-9]*/[0-9]*') || fail "the page's load script did not run"
loaded=${images%/*}; total=${images#*/}
[ "$total" -gt 0 ] && [ "$loaded" = "$total" ] || fail "$loaded of $total images decoded"
echo "browser test: ok ($loaded/$total images decoded, $tables tables, screenshot $out/report.png)"
