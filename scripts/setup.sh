#!/usr/bin/env bash
# Installs the Debian packages weft needs, on a bare Debian (bookworm or trixie).
#
#   bash scripts/setup.sh          # everything: the build, the tests, the demo, the benchmarks, the image
#   bash scripts/setup.sh build    # only what `cargo build` needs (the image's build stage runs this)
#   bash scripts/setup.sh --list [build|all]   # print the package names, install nothing
#
# Idempotent; needs root. WEFT_SKIP_APT=1 skips the installation.
# The Rust toolchain itself (Rust >= 1.89, with cargo) does not come from here:
# Debian's rustc is older than weft needs; install it with rustup.
set -euo pipefail

# What `cargo build` needs beyond Rust: a C compiler and libc headers (ring, and
# the linker driver), protoc and protobuf's well-known .proto files
# (etcd-client's build script compiles etcd's protos, which import
# google/protobuf/descriptor.proto from libprotobuf-dev), and CA certificates
# for cargo's downloads from crates.io.
build_packages=(
  gcc libc6-dev
  protobuf-compiler libprotobuf-dev
  ca-certificates
)
# What the tests, the demo and the benchmarks run: the lab's namespaces and
# tools, etcd, the standard CNI plugins, the masquerade rules' programs, and
# rootful podman for the container test (runc as its runtime, mmdebstrap for
# the local base images, since none can be pulled on an offline machine).
run_packages=(
  iproute2 iputils-ping iperf3 tcpdump tshark ethtool procps strace
  etcd-server etcd-client
  containernetworking-plugins
  nftables iptables
  python3
  podman runc conmon mmdebstrap
)

scope=all
list=0
for arg in "$@"; do
  case "$arg" in
    build | all) scope=$arg ;;
    --list) list=1 ;;
    *) echo "setup.sh: unknown argument '$arg' (want: build, all, --list)" >&2; exit 2 ;;
  esac
done
packages=("${build_packages[@]}")
[ "$scope" = all ] && packages+=("${run_packages[@]}")
if [ "$list" = 1 ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

if [ "${WEFT_SKIP_APT:-0}" != 1 ]; then
  missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ] || [ "${CI:-}" = true ]; then
    [ "$(id -u)" = 0 ] || { echo "setup.sh: installing ${missing[*]} needs root" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # tshark asks whether non-root users may capture; the default (no) is fine.
    if [ "$scope" = all ]; then
      echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    fi
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
  fi
fi
command -v cargo >/dev/null || {
  echo "setup.sh: cargo is missing: install Rust >= 1.89 with rustup (https://rustup.rs); Debian's rustc is too old for weft" >&2
  exit 1
}
