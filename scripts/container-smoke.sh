#!/usr/bin/env bash
# Build the relay's container image and smoke-test it the way an operator would run it.
#
#   scripts/container-smoke.sh [--build-only]
#
# No Docker engine and no registry on our machines (shared/reference/environment.md §1),
# so: podman + runc with private storage, and a stand-in for python:3.11-slim made with
# debootstrap (Debian bookworm + Debian's python 3.11). The stand-in's rootfs and image
# are cached under $RELAY_CTR_CACHE (default /var/tmp/relay-ctr-cache), keyed by a hash
# of their recipe, so only the first run on a machine pays for debootstrap.
#
# Checks, each printed as a PASS/FAIL line: the image builds; the container serves
# /healthz, /readyz, /metrics on the published port; Docker's HEALTHCHECK passes; the app
# runs as uid 10001 even on a root-owned /data (a fresh Fly volume); `relay send-test`
# from the host reaches it and the event is stored; logs are JSON lines; `podman stop`
# (SIGTERM) exits 0 well inside the 30 s grace. Exit status: 0 if every check passed.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${RELAY_CTR_CACHE:-/var/tmp/relay-ctr-cache}
SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_TAG=localhost/relay-base:$SUITE
IMAGE_TAG=localhost/clerk-convex-relay:smoke
CTR=relay-smoke
SECRET=whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
STOP_TIMEOUT_S=30
BUILD_ONLY=0

case "${1:-}" in
    --build-only) BUILD_ONLY=1 ;;
    "") ;;
    *) echo "usage: $0 [--build-only]" >&2; exit 2 ;;
esac

FAILURES=0
pass() { echo "PASS $*"; }
fail() { echo "FAIL $*"; FAILURES=$((FAILURES + 1)); }
note() { echo "---- $*"; }
now_s() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now_s)"; }

# --- tools ---------------------------------------------------------------------------
missing=()
for tool in podman runc debootstrap; do
    command -v "$tool" >/dev/null || missing+=("$tool")
done
if ((${#missing[@]})); then
    if [[ $(id -u) != 0 ]]; then
        echo "FAIL tools: ${missing[*]} missing and not root to apt-get install them"
        exit 1
    fi
    note "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq podman runc debootstrap >/dev/null
fi

# --- private podman ------------------------------------------------------------------
W=$(mktemp -d /tmp/relay-ctr.XXXXXX)
# This sandbox lacks CAP_SYS_RESOURCE (default rlimits fail) and crun rejects its hybrid
# cgroups: lower ulimits and use runc. Via CONTAINERS_CONF, so /etc stays untouched.
cat >"$W/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$W/containers.conf"
P=(podman --root "$W/storage" --runroot "$W/run")

cleanup() {
    "${P[@]}" rm -f -t 0 "$CTR" >/dev/null 2>&1 || true
    "${P[@]}" system reset -f >/dev/null 2>&1 || true
    rm -rf "$W"
}
trap cleanup EXIT

# --- stand-in base image (cached) ------------------------------------------------------
mkdir -p "$CACHE"
cp /etc/ssl/certs/ca-certificates.crt "$W/host-ca.crt"
# The host CA goes in because pip reaches PyPI through a TLS-intercepting proxy here; a
# real python:3.11-slim build elsewhere needs no such thing, and the Dockerfile has none.
cat >"$W/Containerfile.base" <<'CF'
FROM localhost/relay-rootfs:bookworm
COPY host-ca.crt /etc/ssl/certs/host-ca.crt
ENV PIP_CERT=/etc/ssl/certs/host-ca.crt SSL_CERT_FILE=/etc/ssl/certs/host-ca.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/host-ca.crt LANG=C.UTF-8
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip python3-venv ca-certificates \
 && ln -s /usr/bin/python3 /usr/local/bin/python \
 && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED \
 && rm -rf /var/lib/apt/lists/*
CF
rootfs_key=$(printf '%s\n' "v1 minbase $SUITE $MIRROR" | sha256sum | cut -c1-16)
base_key=$( { echo "$rootfs_key"; cat "$W/Containerfile.base" "$W/host-ca.crt"; } | sha256sum | cut -c1-16)
rootfs_tar=$CACHE/rootfs-$SUITE-$rootfs_key.tar
base_tar=$CACHE/base-$SUITE-$base_key.tar

t0=$(now_s)
if [[ -s $base_tar ]]; then
    "${P[@]}" load -q -i "$base_tar" >/dev/null
    pass "base image loaded from cache $base_tar ($(since "$t0") s)"
else
    if [[ ! -s $rootfs_tar ]]; then
        note "debootstrap $SUITE (first run on this machine; cached afterwards)"
        debootstrap --variant=minbase "$SUITE" "$W/rootfs" "$MIRROR" >"$W/debootstrap.log" 2>&1 \
            || { tail -20 "$W/debootstrap.log"; echo "FAIL debootstrap"; exit 1; }
        tar -C "$W/rootfs" -cf "$rootfs_tar.tmp" . && mv "$rootfs_tar.tmp" "$rootfs_tar"
        rm -rf "$W/rootfs"
    fi
    "${P[@]}" import -q "$rootfs_tar" localhost/relay-rootfs:$SUITE >/dev/null
    "${P[@]}" build -q --pull=never -t "$BASE_TAG" -f "$W/Containerfile.base" "$W" >"$W/base.log" 2>&1 \
        || { tail -20 "$W/base.log"; echo "FAIL base image build"; exit 1; }
    "${P[@]}" save -q -o "$base_tar.tmp" "$BASE_TAG" && mv "$base_tar.tmp" "$base_tar"
    pass "base image built and cached as $base_tar ($(since "$t0") s)"
fi

# --- the project image ---------------------------------------------------------------
# --format docker: the OCI format has no HEALTHCHECK and podman would drop ours.
t0=$(now_s)
if "${P[@]}" build --format docker --pull=never --build-arg "BASE_IMAGE=$BASE_TAG" \
    -t "$IMAGE_TAG" "$REPO" >"$W/build.log" 2>&1; then
    size_mb=$("${P[@]}" image inspect --format '{{.Size}}' "$IMAGE_TAG" \
        | python3 -c "import sys; print(round(int(sys.stdin.read()) / 1e6))")
    pass "image build ($(since "$t0") s, $size_mb MB)"
else
    tail -40 "$W/build.log"
    fail "image build ($(since "$t0") s); log tail above"
    exit 1
fi
healthcheck=$("${P[@]}" image inspect --format '{{json .Config.Healthcheck}}' "$IMAGE_TAG")
if [[ $healthcheck == *healthz* ]]; then pass "image keeps its HEALTHCHECK"; else fail "HEALTHCHECK missing: $healthcheck"; fi

if ((BUILD_ONLY)); then
    if ((FAILURES)); then echo "FAIL $FAILURES check(s)"; exit 1; fi
    echo "PASS all (build only)"
    exit 0
fi

# --- run it ----------------------------------------------------------------------------
port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
base_url=http://127.0.0.1:$port
# An empty root-owned directory at /data is what a fresh Fly volume looks like.
mkdir -m 755 "$W/data"
# CONVEX_SITE_URL points at a closed port: deliveries fail and events stay pending,
# which is all this test needs from the delivery side.
# --no-healthcheck: podman's health timer needs systemd, absent here; the image's check
# command is run by hand below instead.
"${P[@]}" run -d --name "$CTR" -p "127.0.0.1:$port:8080" -v "$W/data:/data" --no-healthcheck \
    -e CLERK_WEBHOOK_SECRET="$SECRET" -e CONVEX_SITE_URL=http://127.0.0.1:9 \
    "$IMAGE_TAG" >/dev/null

http_status() {  # prints the HTTP status of GET $1, or 000 if nothing answered
    python3 - "$1" <<'PY'
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
except OSError:
    print("000")
PY
}

t0=$(now_s)
up=0
for _ in $(seq 120); do
    if [[ $(http_status "$base_url/healthz") == 200 ]]; then up=1; break; fi
    if [[ $("${P[@]}" inspect --format '{{.State.Running}}' "$CTR") != true ]]; then break; fi
    sleep 0.5
done
if ((up)); then
    pass "GET /healthz 200 after $(since "$t0") s"
else
    "${P[@]}" logs "$CTR" 2>&1 | tail -40
    fail "GET /healthz never answered 200 (container log tail above)"
    exit 1
fi

for path in /readyz /metrics; do
    status=$(http_status "$base_url$path")
    if [[ $status == 200 ]]; then pass "GET $path 200"; else fail "GET $path answered $status"; fi
done

# The image's own HEALTHCHECK command (["CMD", argv...]), run inside the container.
mapfile -t hc_argv < <(python3 -c 'import json, sys; print(*json.loads(sys.argv[1])["Test"][1:], sep="\n")' "$healthcheck")
if "${P[@]}" exec "$CTR" "${hc_argv[@]}" >/dev/null 2>&1; then pass "HEALTHCHECK command"; else fail "HEALTHCHECK command"; fi

# shellcheck disable=SC2016 # $2 is awk's, not the shell's
uid=$("${P[@]}" exec "$CTR" awk '/^Uid:/ {print $2}' /proc/1/status)
if [[ $uid == 10001 ]]; then pass "runs as uid 10001"; else fail "PID 1 runs as uid $uid, not 10001"; fi

# From the host, through the published port: the path Clerk's requests take. Falls back
# to the image's own CLI when the host has no venv with the relay installed.
host_relay=${RELAY_CLI:-$REPO/.venv/bin/relay}
if [[ -x $host_relay ]]; then
    send=(env CLERK_WEBHOOK_SECRET="$SECRET" CONVEX_SITE_URL=http://127.0.0.1:9 "$host_relay" send-test --url "$base_url")
else
    send=("${P[@]}" exec "$CTR" relay send-test --url http://127.0.0.1:8080)
fi
if (cd "$W" && "${send[@]}") >"$W/send.log" 2>&1; then
    pass "relay send-test --url $base_url"
else
    cat "$W/send.log"
    fail "relay send-test (output above)"
fi

# As the relay user: a root-run CLI could leave root-owned SQLite side files behind.
if "${P[@]}" exec --user relay "$CTR" relay events --json >"$W/events.json" 2>"$W/events.err" \
    && summary=$(python3 - "$W/events.json" <<'PY'
import json, sys
events = json.load(open(sys.argv[1]))
hits = [e for e in events if e.get("type") == "user.created"]
if not hits:
    sys.exit(f"no user.created event among {len(events)}")
print(", ".join(f"{e['id']} {e['status']}" for e in hits))
PY
); then
    pass "event stored: $summary"
else
    cat "$W/events.err" "$W/events.json" 2>/dev/null | tail -20
    fail "relay events --json shows no user.created event"
fi

# --- SIGTERM ---------------------------------------------------------------------------
t0=$(now_s)
"${P[@]}" stop -t "$STOP_TIMEOUT_S" "$CTR" >/dev/null
stop_s=$(since "$t0")
exit_code=$("${P[@]}" inspect --format '{{.State.ExitCode}}' "$CTR")
if [[ $exit_code == 0 ]] && python3 -c "import sys; sys.exit(float(sys.argv[1]) >= $STOP_TIMEOUT_S)" "$stop_s"; then
    pass "SIGTERM: exit 0 after $stop_s s"
else
    fail "SIGTERM: exit code $exit_code after $stop_s s (limit $STOP_TIMEOUT_S s)"
fi

"${P[@]}" logs "$CTR" >"$W/ctr.log" 2>&1
if bad=$(python3 - "$W/ctr.log" <<'PY'
import json, sys
bad = []
for line in open(sys.argv[1], errors="replace"):
    if line.strip():
        try:
            json.loads(line)
        except ValueError:
            bad.append(line.rstrip()[:160])
print("\n".join(bad[:5]))
sys.exit(bool(bad))
PY
); then
    pass "every log line is JSON ($(grep -c . "$W/ctr.log") lines)"
else
    fail "log lines that are not JSON:"$'\n'"$bad"
fi

if ((FAILURES)); then
    echo "FAIL $FAILURES check(s)"
    exit 1
fi
echo "PASS all"
