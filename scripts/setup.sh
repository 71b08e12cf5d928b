#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs: system libraries, a venv, pinned wheels, the package.
set -euo pipefail
VENV=${1:-.venv}
cd "$(dirname "$0")/.."

# Open3D needs libusb-1.0 (and libgomp); install them only when missing.
need=()
ldconfig -p | grep -q 'libusb-1.0.so.0' || need+=(libusb-1.0-0)
ldconfig -p | grep -q 'libgomp.so.1' || need+=(libgomp1)
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${need[*]} with apt-get"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r requirements.txt
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e .
echo "setup: ready in $VENV"
