#!/usr/bin/env bash
# One-time (idempotent) set-up of a Debian machine for fastdist development, tests and the demo:
# system packages (runc, Debian's docker-registry, umoci, busybox-static, redis, compressors),
# a Python virtualenv in .venv with the dev tools, and the Rust extension built into it.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(runc docker-registry umoci skopeo containerd podman busybox-static redis-server redis-tools pigz zstd gzip
              apache2-utils xfsprogs
              tar openssl ca-certificates iproute2 python3-venv
              nasm autoconf automake libtool make)  # last line: build of the bundled ISA-L (igzip)
scripts/apt-ensure.sh "${APT_PACKAGES[@]}"
# Where systemd runs, Debian starts the packaged registry (:5000), redis (:6379) and containerd
# (/run/containerd); the tests, the demo and the benchmarks start their own (free loopback
# ports, temp sockets), so those do not matter.
command -v cargo >/dev/null || { echo "setup: cargo (Rust toolchain) is required: https://rustup.rs" >&2; exit 1; }

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q "maturin>=1.5,<2" "requests>=2.28" pytest pytest-timeout ruff mypy types-requests typing_extensions tomli
# Build the extension (release: the hot path is what we ship) and install fastdist in the venv.
VIRTUAL_ENV="$PWD/.venv" PATH="$PWD/.venv/bin:$PATH" .venv/bin/maturin develop --release -q
echo "setup: ok ($(.venv/bin/python -c 'import fastdist, fastdist._native; print("fastdist", fastdist.__version__)'))"
