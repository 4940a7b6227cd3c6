#!/usr/bin/env bash
# Prepares the citizens' portal test: Debian's Chromium (the browser the end-to-end test
# drives; no browser is downloaded at test time) and CJK fonts for the screenshots, when
# missing; then the portal's npm packages (from package-lock.json) and its build (code
# generated from proto/ by buf, bundled by esbuild). Node.js and npm come with the machine,
# or from Debian's packages.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
missing=()
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
dpkg -s fonts-noto-cjk >/dev/null 2>&1 || missing+=(fonts-noto-cjk)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq || true
  # One at a time: a package that cannot be installed does not hold back the others.
  for pkg in "${missing[@]}"; do
    if DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$pkg" >/dev/null; then
      echo "installed: $pkg"
    else
      echo "could not install $pkg: the portal's browser test may say it skips" >&2
    fi
  done
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "no Node.js/npm could be installed: the portal is not built and its browser test will say it skips" >&2
  exit 0
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
