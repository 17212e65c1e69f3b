#!/usr/bin/env bash
# The fastdist redis demo: Debian's redis-server, in an image, pulled and run by fastdist.
#
# What it does, all on this machine (no internet):
#   1. starts Debian's docker-registry on a free loopback port, with a temporary storage directory;
#   2. builds an image holding this host's redis-server (the binary, the shared libraries ldd lists
#      and the dynamic loader; examples/redis_image.py) whose config runs
#      `redis-server --port PORT --bind 127.0.0.1 --save "" --appendonly no`, and pushes it there;
#   3. `fastdist pull` it, `fastdist images`, `fastdist run -d -p 127.0.0.1:PORT:PORT` (in the
#      default `--net none` namespace: fastdist relays the host port to the container's
#      loopback), then asks it `redis-cli -p PORT ping` from the host until it answers PONG
#      (bounded: 30 s);
#   4. `fastdist ps`, `fastdist stop` (TERM), `fastdist logs -f` (returns once redis has exited),
#      `fastdist rm`.
#
# Needs: root (overlayfs mounts and runc), and the Debian packages runc, docker-registry,
# redis-server and redis-tools (scripts/setup.sh installs them). Runs with the repository's venv
# (.venv, built by scripts/setup.sh); set PYTHON to use another interpreter with fastdist installed.
# The store is a temporary directory removed at the end, unless FASTDIST_ROOT is set.
#
#   sudo examples/redis.sh
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
export PYTHONPATH="$REPO/python${PYTHONPATH:+:$PYTHONPATH}"

die() { echo "redis demo: error: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (overlayfs and runc); run: sudo $0"
[ -x "$PY" ] || die "no python at $PY; run scripts/setup.sh or set PYTHON"
for tool in runc docker-registry redis-server redis-cli; do
    command -v "$tool" >/dev/null || die "$tool not found; apt-get install runc docker-registry redis-server redis-tools"
done

WORK="$(mktemp -d /tmp/fastdist-redis-demo.XXXXXX)"
ROOT="${FASTDIST_ROOT:-$WORK/store}"
ID="redis-demo-$$"
REGISTRY_PID=""
fastdist() { echo "\$ fastdist $*" >&2; "$PY" -m fastdist --root "$ROOT" "$@"; }

cleanup() {
    set +e
    if [ -f "$ROOT/meta.db" ] && "$PY" -m fastdist --root "$ROOT" ps -a 2>/dev/null | grep -q "^$ID "; then
        "$PY" -m fastdist --root "$ROOT" rm -f "$ID" >/dev/null
    fi
    [ -n "$REGISTRY_PID" ] && kill "$REGISTRY_PID" 2>/dev/null && wait "$REGISTRY_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { "$PY" -c 'from fastdist.testing.registry import free_port; print(free_port())'; }
REGISTRY_PORT="$(free_port)"
REDIS_PORT="$(free_port)"
REF="127.0.0.1:$REGISTRY_PORT/demo/redis:latest"

# 1. the registry (the same config the test suite's LocalRegistry writes)
mkdir -p "$WORK/registry"
cat >"$WORK/registry.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$REGISTRY_PORT
EOF
OTEL_TRACES_EXPORTER=none docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGISTRY_PID=$!
"$PY" - "$REGISTRY_PORT" <<'EOF' || { cat "$WORK/registry.log" >&2; die "docker-registry did not start"; }
import sys, time, requests
url, deadline = f"http://127.0.0.1:{sys.argv[1]}/v2/", time.monotonic() + 30
while True:
    try:
        if requests.get(url, timeout=1).status_code == 200:
            break
    except requests.RequestException:
        pass
    if time.monotonic() > deadline:
        sys.exit(1)
    time.sleep(0.1)
EOF
echo "redis demo: registry on 127.0.0.1:$REGISTRY_PORT, store $ROOT"

# 2. the image
DIGEST="$("$PY" "$REPO/examples/redis_image.py" "$REF" --port "$REDIS_PORT")"
echo "redis demo: pushed $REF ($DIGEST), redis-server will listen on 127.0.0.1:$REDIS_PORT"
echo

# 3. pull, list, run, ping
fastdist pull "$REF"
echo
fastdist images
echo
fastdist run -d -p "127.0.0.1:$REDIS_PORT:$REDIS_PORT" --name "$ID" "$REF"
answer=""
for _ in $(seq 300); do  # 300 x 0.1 s: give up after 30 s
    answer="$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null || true)"
    [ "$answer" = PONG ] && break
    sleep 0.1
done
echo "\$ redis-cli -p $REDIS_PORT ping" >&2
echo "${answer:-<no answer>}"
if [ "$answer" != PONG ]; then
    fastdist logs "$ID" >&2 || true
    die "redis-server in the container did not answer PONG on port $REDIS_PORT"
fi
echo

# 4. the container's lifecycle
fastdist ps
fastdist stop "$ID"
fastdist logs -f "$ID" | tail -n 3
fastdist ps -a
fastdist rm "$ID"
echo
echo "redis demo: ok"
