#!/usr/bin/env bash
# The main job: build weft, bring up a 3-node weft overlay in network
# namespaces on the embedded lease store, and show traffic across it.
#
#   bash scripts/demo.sh          # run, show, clean up
#   bash scripts/demo.sh --keep   # leave it running to poke at (clean up with --down)
#   bash scripts/demo.sh --down   # remove a kept demo
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the demo creates namespaces and TAP devices" >&2; exit 1; }

P=weft-demo
WORK=/tmp/weft-demo
NODES=3

down() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^$P-" || true); do
    for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    sleep 0.2
    ip netns del "$ns" 2>/dev/null || true
  done
}

case "${1:-}" in
  --down) down; rm -rf "$WORK"; echo "demo removed"; exit 0 ;;
  --keep) KEEP=1 ;;
  *) KEEP=0 ;;
esac

: setup skipped
echo "== building weft (release)"
: build skipped
WEFTD=${WEFTD_BIN:-$PWD/target/release/weftd}

down
rm -rf "$WORK"; mkdir -p "$WORK"
[ "$KEEP" = 1 ] || trap 'down; rm -rf "$WORK"' EXIT

echo "== underlay: bridge br0 in $P-u, 192.168.100.0/24"
ip netns add "$P-u"
ip -n "$P-u" link set lo up
ip -n "$P-u" link add br0 type bridge
ip -n "$P-u" link set br0 up
ip -n "$P-u" addr add 192.168.100.254/24 dev br0
cp tunables/net-conf.json "$WORK/net-conf.json"

for i in $(seq 1 $NODES); do
  ns="$P-n$i"
  ip netns add "$ns"
  ip link add eth0 netns "$ns" type veth peer name "v$i" netns "$P-u"
  ip -n "$P-u" link set "v$i" master br0 up
  ip -n "$ns" addr add "192.168.100.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via 192.168.100.254
  ip netns exec "$ns" "$WEFTD" \
    --local-store "$WORK/leases" \
    --net-config-path "$WORK/net-conf.json" \
    --subnet-file "$WORK/node$i/subnet.env" \
    --status-socket "$WORK/node$i/weftd.sock" \
    --healthz-port 8081 \
    >"$WORK/node$i.log" 2>&1 &
done

echo "== waiting for the agents"
for i in $(seq 1 $NODES); do
  for _ in $(seq 1 100); do [ -s "$WORK/node$i/subnet.env" ] && break; sleep 0.1; done
  [ -s "$WORK/node$i/subnet.env" ] || { echo "node$i did not come up:"; cat "$WORK/node$i.log"; exit 1; }
  sub=$(sed -n 's/^FLANNEL_SUBNET=//p' "$WORK/node$i/subnet.env")
  echo "node$i (192.168.100.$i): FLANNEL_SUBNET=$sub"
  eval "GW$i=${sub%.1/*}.0"
done
sleep 0.5

echo "== lease files (flannel's etcd keys and JSON)"
for f in "$WORK"/leases/*; do echo "$(basename "$f"): $(cat "$f")"; done

echo "== ping across the overlay (every node to every other node's S.0)"
for i in $(seq 1 $NODES); do
  for j in $(seq 1 $NODES); do
    [ "$i" = "$j" ] && continue
    gw=GW$j
    rtt=$(ip netns exec "$P-n$i" ping -c 3 -i 0.2 -q "${!gw}" | sed -n 's|^rtt.*= [^/]*/\([^/]*\)/.*|\1|p')
    echo "node$i -> node$j (${!gw}): avg rtt ${rtt} ms"
  done
done

echo "== iperf3 TCP node1 -> node2 through weft (5 s)"
ip netns exec "$P-n2" iperf3 -s -1 -B "$GW2" >/dev/null 2>&1 &
sleep 0.5
ip netns exec "$P-n1" iperf3 -c "$GW2" -t 5 | tail -4

echo "== weftd status on node1"
"$WEFTD" status --status-socket "$WORK/node1/weftd.sock"

echo "== node1's kernel view"
ip -n "$P-n1" -d link show flannel.1 | head -2
ip -n "$P-n1" route show dev flannel.1
ip -n "$P-n1" neigh show dev flannel.1

if [ "$KEEP" = 1 ]; then
  cat <<TXT

The demo keeps running. Try:
  ip netns exec $P-n1 ping ${GW2}
  ip netns exec $P-n2 tcpdump -ni flannel.1
  $WEFTD status --status-socket $WORK/node1/weftd.sock
  ip netns exec $P-n1 curl -s localhost:8081/metrics   (or any HTTP client)
Logs: $WORK/node*.log.  Remove it: bash scripts/demo.sh --down
TXT
fi
