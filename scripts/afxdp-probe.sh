#!/usr/bin/env bash
# Does AF_XDP on the underlay beat weft's UDP GSO/GRO sockets?
# Builds probes/afxdp (a crate of its own) and runs it between two fresh
# network namespaces joined by a veth pair: 1400-byte UDP payloads to port
# 4789 from A (CPU 0) to B (CPU 1), as UDP GSO -> UDP GRO (`udp`), UDP GSO ->
# AF_XDP on a native XDP program (`xdp-rx`) and AF_XDP -> AF_XDP
# (`xdp-both`), modes alternating round by round; prints datagrams/s,
# Gbit/s and the machine's CPU time per GB received (/proc/stat).
# Usage (root): bash scripts/afxdp-probe.sh [rounds, default 5] [seconds per round and mode, default 2] [modes, default udp,xdp-rx,xdp-both]
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root: it creates network namespaces, a veth pair and an XDP program" >&2; exit 1; }
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
SECONDS_PER=${2:-2}
MODES=${3:-udp,xdp-rx,xdp-both}

NSA=afxa$$
NSB=afxb$$
DEVA=afxa$$
DEVB=afxb$$
IPA=10.199.0.1
IPB=10.199.0.2
MACA=02:af:00:00:00:01
MACB=02:af:00:00:00:02
cleanup() {
	# Deleting the namespaces deletes the veth pair and, with B's end, any
	# XDP program still attached to it; the probe itself is gone by now
	# (it runs in the foreground), so nothing else is left.
	ip netns del "$NSA" 2>/dev/null || true
	ip netns del "$NSB" 2>/dev/null || true
	ip link del "$DEVA" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release --quiet --locked --manifest-path probes/afxdp/Cargo.toml

ip netns add "$NSA"
ip netns add "$NSB"
for ns in "$NSA" "$NSB"; do
	# No IPv6: its router solicitations and MLD reports would be frames
	# the probe did not send.
	ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
	ip -n "$ns" link set lo up
done
ip link add "$DEVA" address "$MACA" netns "$NSA" type veth peer name "$DEVB" address "$MACB" netns "$NSB"
ip -n "$NSA" addr add "$IPA/24" dev "$DEVA"
ip -n "$NSB" addr add "$IPB/24" dev "$DEVB"
ip -n "$NSA" link set "$DEVA" up
ip -n "$NSB" link set "$DEVB" up
# Static neighbours: no ARP on the wire.
ip -n "$NSA" neigh replace "$IPB" lladdr "$MACB" dev "$DEVA" nud permanent
ip -n "$NSB" neigh replace "$IPA" lladdr "$MACA" dev "$DEVB" nud permanent

probes/afxdp/target/release/weft-afxdp-probe \
	--ns-a "$NSA" --ns-b "$NSB" --dev-a "$DEVA" --dev-b "$DEVB" \
	--ip-a "$IPA" --ip-b "$IPB" \
	--rounds "$ROUNDS" --seconds "$SECONDS_PER" --modes "$MODES"
