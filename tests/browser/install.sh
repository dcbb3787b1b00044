#!/usr/bin/env bash
# What tests/test_page_browser.py needs, installed only if missing:
# Debian's Chromium (no browser download: Playwright's own builds cannot be
# fetched here) and playwright-core pinned by package-lock.json.
# Idempotent: a second run changes nothing and takes well under a second.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if [[ ! -x /usr/bin/chromium ]]; then
    if [[ "$(id -u)" -eq 0 ]]; then
        as_root=()
    elif command -v sudo >/dev/null 2>&1; then
        as_root=(sudo)
    else
        echo "install.sh: /usr/bin/chromium is missing; run as root (or with sudo): apt-get install -y chromium" >&2
        exit 1
    fi
    echo "install.sh: installing Debian's chromium"
    "${as_root[@]}" apt-get update
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
fi

if ! command -v npm >/dev/null 2>&1; then
    echo "install.sh: npm is missing; install Node.js 20+ with npm (Debian: apt-get install -y nodejs npm)" >&2
    exit 1
fi

# npm writes node_modules/.package-lock.json on every install: older than the
# lock file means the lock file changed since.
stamp="$here/node_modules/.package-lock.json"
if [[ ! -f "$stamp" || "$here/package-lock.json" -nt "$stamp" ]]; then
    echo "install.sh: npm ci in tests/browser"
    PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$here" --no-audit --no-fund
    touch "$stamp"
fi
