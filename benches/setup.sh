#!/usr/bin/env bash
# Install what the pull benchmark (benches/pull.py) compares against and needs, from Debian's packages:
# containerd (ctr), skopeo + umoci, the naive pipeline's curl/pigz/zstd/tar, GNU time (peak RSS),
# Debian's registry, podman (benches/archive.py, benches/deep_check.py) and xxhash (xxhsum, a
# reference in benches/deep_check.py);
# numpy (the statistics: benches/stats.py), matplotlib (the charts) and py-spy (--profile) from
# PyPI into the benchmark's Python.
# Idempotent: installs only what is missing. Usage: benches/setup.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(containerd skopeo umoci pigz zstd curl tar time docker-registry podman xxhash)
scripts/apt-ensure.sh "${APT_PACKAGES[@]}"
# containerd decompresses gzip layers with unpigz when it is on PATH (pigz ships it).
command -v unpigz >/dev/null || { echo "bench-setup: unpigz missing (package pigz)" >&2; exit 1; }

PY=${1:-${PYTHON:-}}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" -c 'import numpy' 2>/dev/null || "$PY" -m pip install -q numpy
"$PY" -c 'import matplotlib' 2>/dev/null || "$PY" -m pip install -q matplotlib
"$PY" -c 'import shutil, sys; sys.exit(shutil.which("py-spy") is None)' 2>/dev/null \
  || "$PY" -m pip install -q py-spy || echo "bench-setup: py-spy unavailable (only --profile needs it)" >&2
echo "bench-setup: ok"
