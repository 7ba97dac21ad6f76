#!/usr/bin/env bash
# Opens a page sadajem wrote — a run's report.html, or `sadajem compare`'s compare.html — in
# headless Chromium (Debian's package, installed when absent), keeps a screenshot as a test
# artefact, and checks that the page rendered: every section is there, at least MIN_TABLES
# tables, and every embedded image decoded.
#
#   scripts/browser-test.sh RUN_DIR/report.html [OUT_DIR]      (the report's sections, 3 tables)
#   scripts/browser-test.sh PAGE OUT_DIR MIN_TABLES SECTION...
set -euo pipefail
report=$(realpath "$1")
out=${2:-target/test-artifacts}
min_tables=${3:-3}
sections=("${@:4}")
[ ${#sections[@]} -gt 0 ] || sections=(summary training evaluation config timing)
name=$(basename "$report" .html)
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
chromium "${flags[@]}" --window-size=1280,3000 --screenshot="$out/$name.png" "file://$report" 2>/dev/null
chromium "${flags[@]}" --dump-dom "file://$report" 2>/dev/null > "$out/$name-dom.html"

fail() { echo "browser test: $name.html: FAILED: $*"; exit 1; }
[ -s "$out/$name.png" ] || fail "no screenshot"
for section in "${sections[@]}"; do
  grep -q "<section id=\"$section\">" "$out/$name-dom.html" || fail "section $section missing"
done
tables=$(grep -o "<table>" "$out/$name-dom.html" | wc -l)
[ "$tables" -ge "$min_tables" ] || fail "only $tables tables"
images=$(grep -o 'data-images-ok="[0-9]*/[0-9]*"' "$out/$name-dom.html" | grep -o '[0-9]*/[0-9]*') || fail "the page's load script did not run"
loaded=${images%/*}; total=${images#*/}
[ "$total" -gt 0 ] && [ "$loaded" = "$total" ] || fail "$loaded of $total images decoded"
echo "browser test: $name.html ok ($loaded/$total images decoded, $tables tables, screenshot $out/$name.png)"
