#!/usr/bin/env bash
# Debian packages the test suite needs; installs only what is missing.
#   docker-compose  validates docker-compose.yaml (no Docker engine is needed for that)
#   chromium        the browser tests/e2e/test_airflow_ui.py drives with Playwright
set -euo pipefail
missing=()
command -v docker-compose >/dev/null || missing+=(docker-compose)
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -eq 0 ]; then sudo=""; elif command -v sudo >/dev/null; then sudo="sudo -n"; else
  echo "need root (or sudo) to install: ${missing[*]}" >&2; exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
