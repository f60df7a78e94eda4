#!/usr/bin/env bash
# Builds the weft node image from deploy/Containerfile with rootful podman, on
# a machine that cannot pull base images: the two bases are made locally.
#
#   bash scripts/image.sh                    # weft:dev on Debian trixie
#   bash scripts/image.sh --suite bookworm   # on bookworm
#   bash scripts/image.sh --tag weft:test
#   bash scripts/image.sh --bases-only       # only the two base images (scripts/fresh-check.sh)
#
# - the runtime base, localhost/weft-base:SUITE, is a Debian minbase from
#   mmdebstrap (docs, man pages and locales left out, as in Debian's -slim
#   images), imported with `podman import`;
# - the build base, localhost/weft-build-base:SUITE, is the same tree with
#   this machine's Rust toolchain on PATH (`rustc --print sysroot`, mounted
#   read-only into the build at /opt/rust, since no other can be fetched
#   here) and this machine's extra CA certificates.
# Both are made once and reused (WEFT_REBUILD_BASE=1 remakes them). On a
# machine that can pull, plain `podman build -f deploy/Containerfile .` uses
# rust:1.95-trixie and debian:trixie-slim instead.
#
# podman runs with deploy/podman/containers.conf (runc, cgroupfs, no default
# ulimits) unless CONTAINERS_CONF says otherwise; nothing in /etc is changed.
# Needs root, podman, runc and mmdebstrap (scripts/setup.sh installs them).
set -euo pipefail
cd "$(dirname "$0")/.."

suite=trixie
tag=weft:dev
bases_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --suite) suite=$2; shift 2 ;;
    --tag) tag=$2; shift 2 ;;
    --bases-only) bases_only=1; shift ;;
    *) echo "image.sh: unknown argument '$1' (want --suite SUITE, --tag NAME, --bases-only)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "image.sh: run as root (rootful podman)" >&2; exit 1; }
for tool in podman runc mmdebstrap; do
  command -v "$tool" >/dev/null || { echo "image.sh: $tool is missing: run 'bash scripts/setup.sh' first" >&2; exit 1; }
done
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
mirror=${WEFT_DEBIAN_MIRROR:-http://deb.debian.org/debian}

base=localhost/weft-base:$suite
build_base=localhost/weft-build-base:$suite
if [ "${WEFT_REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$base" || ! podman image exists "$build_base"; then
  echo "== base images for Debian $suite (mmdebstrap --variant=minbase, $mirror)"
  tar=$(mktemp --suffix=.tar)
  trap 'rm -f "$tar"' EXIT
  mmdebstrap --variant=minbase --quiet \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$suite" "$tar" "$mirror"
  podman import --quiet "$tar" "$base" >/dev/null
  # The build base trusts what this machine trusts beyond Debian's CAs (its
  # /usr/local/share/ca-certificates, e.g. a TLS-intercepting egress proxy's
  # CA, without which cargo cannot reach crates.io from inside the build):
  # the build stage's ca-certificates install adds them to the bundle.
  ctx=$(mktemp -d)
  trap 'rm -f "$tar"; rm -rf "$ctx"' EXIT
  mkdir -p "$ctx/ca"
  if [ -d /usr/local/share/ca-certificates ]; then
    find /usr/local/share/ca-certificates -name '*.crt' -exec cp {} "$ctx/ca/" \;
  fi
  {
    echo "FROM $base"
    echo "COPY ca/ /usr/local/share/ca-certificates/"
    echo "ENV PATH=/opt/rust/bin:/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    echo "ENV CARGO_HOME=/usr/local/cargo"
  } >"$ctx/Containerfile"
  podman build --quiet --tag "$build_base" "$ctx" >/dev/null
fi

[ "$bases_only" = 1 ] && exit 0

sysroot=$(rustc --print sysroot)
echo "== building $tag (build base $build_base with the toolchain at $sysroot, runtime base $base)"
podman build \
  --network host \
  --volume "$sysroot:/opt/rust:ro" \
  --build-arg "BUILD_BASE=$build_base" \
  --build-arg "BASE=$base" \
  --file deploy/Containerfile \
  --tag "$tag" \
  .
podman image inspect --format '{{.Size}}' "$tag" |
  awk -v t="$tag" '{ printf "== %s: %.1f MB\n", t, $1 / 1e6 }'
