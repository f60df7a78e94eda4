#!/usr/bin/env bash
# The whole test suite: formatting, lints, the fresh-machine checks, the node
# image, unit and simulation tests, the netns tests on real kernels (root, the
# container test among them), and a smoke run of the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root: the netns tests create namespaces and TAP devices" >&2; exit 1; }
START=$SECONDS
# Each step says when it starts, seconds into the run (CI should stay well under 30 min).
step() { echo "== [$((SECONDS - START)) s] $*"; }
step "packages (setup.sh)"
bash scripts/setup.sh
export CARGO_TERM_COLOR=never
step "fmt, clippy"
cargo fmt --check
cargo clippy --all-targets --locked -- -D warnings
# setup.sh's packages suffice on a bare Debian: bookworm checked here (cargo
# check in a minbase container), trixie by the image build below (a release
# build in a minbase container), both suites resolving the full list.
step "fresh-machine checks"
bash scripts/fresh-check.sh bookworm
bash scripts/fresh-check.sh trixie --packages-only
# The node image the container test runs (deploy/Containerfile, on trixie).
step "node image"
bash scripts/image.sh
# Unit, integration and netns tests (two at a time: the machine has few cores).
step "unit, integration and netns tests"
cargo test --locked --no-fail-fast --lib --bins --tests -- --test-threads="${WEFT_TEST_THREADS:-2}"
# The benchmarks as smoke tests: each criterion bench once, one short e2e round.
step "benches (smoke)"
cargo test --locked --benches
# The io_uring and AF_XDP probes (README, Performance): lint-clean, and a
# short run of each, whose own checks (the bytes read or received are the
# bytes sent) must pass, so that the figures they gave can be reproduced.
step "probes (smoke)"
for probe in uring afxdp; do
  cargo fmt --check --manifest-path "probes/$probe/Cargo.toml"
  cargo clippy --release --locked --manifest-path "probes/$probe/Cargo.toml" -- -D warnings
done
bash scripts/uring-probe.sh 512 2 32 64
bash scripts/afxdp-probe.sh 1 0.3
# The netns suite again with every dataplane offload forced off: both paths
# must work. Left out: the container test (it runs the DaemonSet's spec,
# which has no tunables) and the control-plane suites whose traffic is only
# a probe (faults, CNI churn, lease re-adds, flag options); they ran above.
step "netns tests with offloads off"
WEFT_TEST_OFFLOADS=off cargo test --locked --test netns -- --test-threads="${WEFT_TEST_THREADS:-2}" \
  --skip container:: --skip faults --skip cni_churn:: --skip readd:: --skip options::
step "done"
