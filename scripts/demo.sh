#!/usr/bin/env bash
# The whole driftwatch flow on one machine, on the embedded default store:
#
#   1. bake a manifest of a sample root copied from a real directory
#      (/usr/share/doc plus a few binaries from /usr/bin),
#   2. start a collector (SQLite in a temp dir) and register the image,
#   3. start an agent watching the sample root, rescanning every 3 s,
#   4. drift the root the way hosts drift (a hot-patched config, a dropped
#      binary, a setuid bit) and show what the collector reports,
#   5. put the config back and show that its deviation resolves.
#
# Usage: scripts/demo.sh [--keep]   (builds release binaries first if needed)
#   --keep  leave the collector and agent running afterwards, with the
#           dashboard URL printed, until Ctrl-C.
set -euo pipefail
keep=false
[ "${1:-}" = "--keep" ] && keep=true
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cargo build --release --quiet -p driftwatch-agent -p driftwatch-collector
agent=$PWD/target/release/driftwatch-agent
collector=$PWD/target/release/driftwatch-collector

work=$(mktemp -d /tmp/driftwatch-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. bake a sample root (a copy of /usr/share/doc and a few of /usr/bin)"
root=$work/root
mkdir -p "$root/usr/share" "$root/usr/bin" "$root/etc"
cp -a /usr/share/doc "$root/usr/share/doc"
for tool in ls cat sh; do cp -a "$(command -v $tool)" "$root/usr/bin/" 2>/dev/null || true; done
printf 'demo-host-0001\n' > "$root/etc/machine-id"
printf 'PermitRootLogin no\n' > "$root/etc/sshd_config"
"$agent" bake --root "$root" --out "$work/manifest.dwm" \
    --image-id demo --image-version 1.0 | head -3

step "2. start the collector (embedded SQLite in $work/data) and register the image"
"$collector" serve --listen 127.0.0.1:0 --http 127.0.0.1:0 --data-dir "$work/data" \
    2> "$work/collector.log" &
pids+=($!)
for _ in $(seq 100); do
    addr=$(grep -o ' addr=[0-9.:]*' "$work/collector.log" | head -1 | cut -d= -f2) || true
    [ -n "${addr:-}" ] && break
    sleep 0.1
done
[ -n "${addr:-}" ] || { cat "$work/collector.log"; exit 1; }
server=http://$addr
dashboard=http://$(grep -o 'http_addr=[0-9.:]*' "$work/collector.log" | head -1 | cut -d= -f2)/
echo "collector listening on $server, dashboard on $dashboard"
"$collector" images register "$work/manifest.dwm" --server "$server"

step "3. start an agent watching the sample root (rescans every 3 s)"
"$agent" run --collector "$server" --root "$root" --manifest "$work/manifest.dwm" \
    --state-dir "$work/agent-state" --interval 3s --heartbeat 1s 2> "$work/agent.log" &
pids+=($!)

# Waits until `host` JSON satisfies a jq-free check done with grep.
wait_for() {
    local pattern=$1
    for _ in $(seq 150); do
        if "$collector" host demo-host-0001 --server "$server" --format json 2>/dev/null \
            | grep -q -- "$pattern"; then
            return 0
        fi
        sleep 0.2
    done
    echo "timed out waiting for: $pattern" >&2
    tail -20 "$work/agent.log" >&2
    return 1
}
wait_for '"last_scan": "2'
"$collector" hosts --server "$server"

step "4. drift the host: hot-patch a config, drop a binary, set a setuid bit"
printf 'PermitRootLogin yes\n' > "$root/etc/sshd_config"
printf '#!/bin/sh\necho pwned\n' > "$root/usr/bin/backdoor"
chmod 0755 "$root/usr/bin/backdoor"
chmod u+s "$root/usr/bin/cat" 2>/dev/null || true
wait_for '"usr/bin/backdoor"'
"$collector" hosts --server "$server"
echo
"$collector" host demo-host-0001 --server "$server"
echo
"$collector" replacements --server "$server"

step "5. put the config back: its deviation resolves (the critical flag stays until retired)"
printf 'PermitRootLogin no\n' > "$root/etc/sshd_config"
for _ in $(seq 150); do
    "$collector" host demo-host-0001 --server "$server" --format json | grep -q '"etc/sshd_config"' || break
    sleep 0.2
done
"$collector" host demo-host-0001 --server "$server"

if $keep; then
    step "the collector and agent keep running: open $dashboard (Ctrl-C to stop)"
    wait
fi
