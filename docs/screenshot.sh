#!/usr/bin/env bash
# Screenshots of the built site in headless Chromium, to look at the generated pages and diagrams.
#
#   docs/screenshot.sh [BUILD_DIR] [OUT_DIR]
#
# BUILD_DIR is the HTML output of `sphinx-build -b html docs BUILD_DIR` (default docs/_build/html);
# PNGs go to OUT_DIR (default BUILD_DIR/_screenshots): the top of the VM-entry check catalogue, one
# check's section, the state-machine diagram of the VMX operation page, the walk diagram of the
# two-level translation tutorial, samples of the CLI and API references, the performance chart, the
# organisations cost tables, the proof results and the SVM VMRUN check catalogue. Needs the `chromium` binary (Debian package `chromium`; not a
# project dependency). Each run uses a fresh, throw-away profile directory.
#
# Headless Chromium takes its screenshot before it scrolls to a #fragment, so each page is loaded
# in an iframe of a small wrapper page that shifts the iframe up to the wanted element.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-docs/_build/html}
out=${2:-$build/_screenshots}
browser=${CHROMIUM:-chromium}
command -v "$browser" >/dev/null || { echo "screenshot.sh: $browser not found (apt-get install chromium)" >&2; exit 2; }
[ -f "$build/index.html" ] || { echo "screenshot.sh: no built site in $build (run sphinx-build first)" >&2; exit 2; }
mkdir -p "$out"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

shoot() {  # shoot NAME PAGE ELEMENT-ID HEIGHT
  local page width=1400
  page="file://$(realpath "$build/$2")"
  cat >"$tmp/$1.html" <<HTML
<!doctype html><html><body style="margin:0;overflow:hidden">
<iframe id="f" src="$page" style="border:0;width:${width}px;height:$4px;display:block"></iframe>
<script>
var f = document.getElementById("f");
f.addEventListener("load", function () {
  var d = f.contentWindow.document, el = d.getElementById("$3");
  if (!el) { document.body.innerHTML = "<h1>no element $3 in $2</h1>"; return; }
  f.style.height = d.documentElement.scrollHeight + "px";
  f.style.marginTop = -(el.getBoundingClientRect().top + f.contentWindow.scrollY) + "px";
});
</script></body></html>
HTML
  rm -rf "$tmp/profile"
  "$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
    --disable-sync --no-first-run --user-data-dir="$tmp/profile" --allow-file-access-from-files --hide-scrollbars \
    --window-size="$width,$4" --virtual-time-budget=5000 --screenshot="$out/$1.png" "file://$tmp/$1.html" \
    >/dev/null 2>&1
  [ -s "$out/$1.png" ] || { echo "screenshot.sh: no screenshot of $2" >&2; exit 1; }
  echo "$out/$1.png"
}

shoot entry-checks reference/entry-checks.html vm-entry-checks 1100
shoot entry-check-guest-cr0 reference/entry-checks.html check-guest-cr0-fixed-bits 700
shoot state-machine vmx-operation.html the-state-machine 900
shoot two-level-walk tutorials/two-level-translation.html the-walk-drawn 1200
shoot cli reference/cli.html vtx-check 900
shoot api reference/api.html module-vtx.vmx.entry 900
shoot performance performance.html performance 1300
shoot organisations organisations.html what-the-cost-model-says 1000
shoot invariants invariants.html results 1000
shoot svm-vmrun-checks reference/svm-vmrun-checks.html vmrun-checks 1000
