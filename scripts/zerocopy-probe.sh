#!/usr/bin/env bash
# Does MSG_ZEROCOPY pay for weft's UDP sends on a veth underlay? Sends
# 64 KiB UDP GSO packets (46 x 1400 B, the shape of weft's TSO sends) across
# a veth pair into another namespace, alternately plain and with
# MSG_ZEROCOPY (completions drained from the error queue, as weft would have
# to), and prints each sender's CPU time, the receiver's, and how many
# completions the kernel marked "copied" (SO_EE_CODE_ZEROCOPY_COPIED).
# Usage (root): bash scripts/zerocopy-probe.sh [sends per run, default 200000] [rounds, default 2]
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root: it creates network namespaces" >&2; exit 1; }
SENDS=${1:-200000}
ROUNDS=${2:-2}
TAG=zc$$
A=$TAG-a B=$TAG-b
WORK=$(mktemp -d)
cleanup() { ip netns del "$A" 2>/dev/null || true; ip netns del "$B" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ip netns add "$A"
ip netns add "$B"
ip link add "${TAG}a" netns "$A" type veth peer name "${TAG}b" netns "$B"
ip -n "$A" addr add 10.99.0.1/24 dev "${TAG}a"
ip -n "$B" addr add 10.99.0.2/24 dev "${TAG}b"
for ns in "$A" "$B"; do ip -n "$ns" link set lo up; done
ip -n "$A" link set "${TAG}a" up
ip -n "$B" link set "${TAG}b" up

cat > "$WORK/tx.py" <<'EOF'
import os, socket, sys, time, resource, struct
SO_ZEROCOPY, MSG_ZEROCOPY, UDP_SEGMENT, ENOBUFS = 60, 0x4000000, 103, 105
mode, n = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_UDP, UDP_SEGMENT, 1400)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
flags = 0
if mode == "zerocopy":
    s.setsockopt(socket.SOL_SOCKET, SO_ZEROCOPY, 1)
    flags = MSG_ZEROCOPY
buf = bytearray(os.urandom(1400 * 46))
s.connect(("10.99.0.2", 9999))
done = copied = sent = 0
r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
while sent < n:
    try:
        s.sendmsg([buf], [], flags)
        sent += 1
    except BlockingIOError:
        pass
    except OSError as e:
        if e.errno != ENOBUFS:  # optmem full of completions: drain them below
            raise
    while mode == "zerocopy":
        try:
            _, anc, _, _ = s.recvmsg(0, 256, socket.MSG_ERRQUEUE | socket.MSG_DONTWAIT)
        except BlockingIOError:
            break
        for _, _, data in anc:
            _, _, _, code, _, lo, hi = struct.unpack("IBBBBII", data[:16])
            done += hi - lo + 1
            copied += (hi - lo + 1) if code & 1 else 0
r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
print(f"{mode:9} sender: {n} sends in {t1 - t0:.2f} s ({n * len(buf) * 8 / (t1 - t0) / 1e9:.1f} Gbit/s), "
      f"sys {r1.ru_stime - r0.ru_stime:.2f} s, user {r1.ru_utime - r0.ru_utime:.2f} s; "
      f"completions {done}, of which copied {copied}")
EOF
cat > "$WORK/rx.py" <<'EOF'
import socket, resource
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.setsockopt(socket.SOL_UDP, 104, 1)  # UDP_GRO, as weft's listeners
s.bind(("10.99.0.2", 9999))
s.settimeout(2)
b, total = bytearray(70000), 0
r0 = resource.getrusage(resource.RUSAGE_SELF)
try:
    while True:
        total += s.recv_into(b)
except socket.timeout:
    pass
r1 = resource.getrusage(resource.RUSAGE_SELF)
print(f"          receiver: {total / 1e9:.2f} GB, sys {r1.ru_stime - r0.ru_stime:.2f} s")
EOF
for _ in $(seq "$ROUNDS"); do
  for mode in plain zerocopy; do
    ip netns exec "$B" python3 "$WORK/rx.py" > "$WORK/rx.log" &
    rx=$!
    sleep 0.5
    ip netns exec "$A" python3 "$WORK/tx.py" "$mode" "$SENDS"
    wait "$rx"
    cat "$WORK/rx.log"
  done
done
