#!/usr/bin/env bash
# Idempotent set-up: Debian packages (only the missing ones), a virtualenv in .venv,
# and the project installed into it (only when pyproject.toml changed).
# Usage: scripts/bootstrap.sh [run|test]   (test also installs the test-only packages)
set -euo pipefail
cd "$(dirname "$0")/.."
purpose="${1:-run}"

debs=(haproxy)
if [ "$purpose" = test ]; then
  debs+=(shellcheck cloud-init chromium fonts-dejavu-core systemd wrk httperf hey)
fi

missing=()
for pkg in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "scalelab: installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "scalelab: need root (or sudo) to install ${missing[*]} with apt-get" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "scalelab: creating .venv"
  "$python" -m venv .venv
fi

extras=""
[ "$purpose" = test ] && extras="[test]"
stamp=".venv/.scalelab-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)$extras"
if ! grep -qxF "$want" "$stamp" 2>/dev/null; then
  echo "scalelab: installing Python packages into .venv$( [ -n "$extras" ] && echo " (with test extras)")"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".$extras"
  echo "$want" >> "$stamp"
fi
