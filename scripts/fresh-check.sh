#!/usr/bin/env bash
# Proves that scripts/setup.sh installs everything weft's build needs on a
# bare Debian: in a container made from a Debian minbase of SUITE (nothing
# installed but Debian's essential packages and apt, plus this machine's Rust
# toolchain mounted read-only, as scripts/image.sh makes it), it installs
# `setup.sh build`'s packages and checks the whole package with cargo (every
# build script runs: protoc over etcd's protos, the C compiler for ring; every
# build script links), and it resolves `setup.sh`'s full list with apt.
#
#   bash scripts/fresh-check.sh bookworm
#   bash scripts/fresh-check.sh trixie --packages-only   # only the apt resolution
#
# The image build (scripts/image.sh) does the same on its suite with a full
# release build. Needs root, podman, runc, mmdebstrap.
set -euo pipefail
cd "$(dirname "$0")/.."
suite=${1:?usage: fresh-check.sh SUITE [--packages-only]}
packages_only=0
[ "${2:-}" = --packages-only ] && packages_only=1
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}
bash scripts/image.sh --suite "$suite" --bases-only

all=$(bash scripts/setup.sh --list all | tr '\n' ' ')
if [ "$packages_only" = 1 ]; then
  build_steps="true"
else
  # cargo check: every dependency's metadata and every build script, without codegen.
  build_steps="CI=true bash /src/scripts/setup.sh build && \
    cargo check --locked --manifest-path /src/Cargo.toml --bins --lib && \
    echo 'fresh-check: cargo check passed on a bare $suite with setup.sh build'"
fi
echo "== fresh Debian $suite: setup.sh's packages and the build"
podman run --rm --network host \
  --volume "$PWD:/src:ro" \
  --volume "$(rustc --print sysroot):/opt/rust:ro" \
  --env CARGO_TARGET_DIR=/tmp/target \
  "localhost/weft-build-base:$suite" \
  bash -euo pipefail -c "
    apt-get update -qq
    # Every package of setup.sh's full list resolves on $suite.
    apt-get install --simulate --no-install-recommends -qq $all >/dev/null
    echo 'fresh-check: all of setup.sh resolves on $suite: $all'
    $build_steps
  "
