#!/usr/bin/env bash
# Idempotent set-up: system libraries (when root with apt), a .venv in the repository, the package.
# Usage: bash scripts/setup.sh [--test]   (--test also installs the test extras)
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

# open3d needs libusb to import; its OffscreenRenderer needs Vulkan (Mesa's software driver on CPU).
need_apt=()
for pkg in libusb-1.0-0 libvulkan1 mesa-vulkan-drivers libgl1 libgomp1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[setup] installing system packages: ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "[setup] warning: missing system packages ${need_apt[*]} (install them with your package manager)" >&2
  fi
fi

py=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$py" -m venv .venv
fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }
stamp=.venv/.bpnp-installed$extras
# The test install includes the plain one.
if ! fresh "$stamp" && ! { [ -z "$extras" ] && fresh ".venv/.bpnp-installed[test]"; }; then
  echo "[setup] installing bpnp$extras into .venv"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  # torch pinned first: a bare 'torch' requirement would pull a multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0"
  .venv/bin/python -m pip install -q -e ".$extras"
  touch "$stamp"
fi
