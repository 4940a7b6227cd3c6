#!/usr/bin/env bash
# Prepares the citizens' portal test: Debian's Chromium (the browser the end-to-end test
# drives; no browser is downloaded at test time) and CJK fonts for the screenshots, when
# missing; then the portal's npm packages (from package-lock.json) and its build (code
# generated from proto/ by buf, bundled by esbuild). Node.js and npm come with the machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
fc-list 2>/dev/null | grep -qi "Noto Sans CJK" || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
    echo "could not install ${missing[*]}: the portal's browser test will say it skips" >&2
  else
    echo "installed: ${missing[*]}"
  fi
fi
cd "$root/services/portal"
# `npm install` with the committed lock, not `npm ci`: the registry this machine reaches
# lacks some of buf's optional per-platform packages (darwin, win32), which `npm ci` counts
# as a lock mismatch; `npm install` skips optional packages it cannot get.
stamp=node_modules/.package-lock.json
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  npm install --no-audit --no-fund --loglevel=error
fi
npm run --silent build
