#!/usr/bin/env bash
# Does io_uring cut the per-frame cost of weft's TAP reads and writes?
# Builds probes/uring (a crate of its own) and runs it in a fresh network
# namespace: frames queued on a TAP are read with read(2), io_uring reads
# (plain, registered buffers, multishot) and written with write(2) against
# io_uring writes, modes alternating; prints process CPU per frame.
# Usage (root): bash scripts/uring-probe.sh [frames per round, default 4096] [rounds, default 50] [io_uring depth, default 64] [UDP payload bytes, default 64]
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root: it creates a network namespace and a TAP" >&2; exit 1; }
cd "$(dirname "$0")/.."
cargo build --release --quiet --locked --manifest-path probes/uring/Cargo.toml
NS=urp$$
cleanup() { ip netns del "$NS" 2>/dev/null || true; }
trap cleanup EXIT
ip netns add "$NS"
# No IPv6 on the TAP: its router solicitations and MLD reports would be
# frames the probe did not send.
ip netns exec "$NS" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
ip -n "$NS" link set lo up
ip netns exec "$NS" probes/uring/target/release/weft-uring-probe "$@"
