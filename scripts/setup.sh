#!/usr/bin/env bash
# Installs what weft's build, tests, demo and benchmarks need on a Debian machine.
# Idempotent; needs root. Set WEFT_SKIP_APT=1 to skip.
set -euo pipefail
[ "${WEFT_SKIP_APT:-0}" = 1 ] && exit 0
packages=(
  iproute2 iputils-ping iperf3 tcpdump tshark ethtool procps
  etcd-server etcd-client
  containernetworking-plugins
  nftables iptables
  protobuf-compiler
  python3
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ] || [ "${CI:-}" = true ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # tshark asks whether non-root users may capture; the default (no) is fine.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is missing: install a Rust toolchain (rustup)" >&2; exit 1; }
