//! Tests on real kernels: network namespaces, veth, TAP devices, real `weftd`
//! processes and real tools (ping, iperf3, tcpdump). They need root; CI runs
//! them as root. A plain `cargo test` without root skips them and says so
//! (`harness::skip_without_root`); with `CI` set it fails instead. See
//! `harness.rs` for the lab they build.

#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

mod cni;
mod cni_churn;
mod container;
mod dualstack;
mod etcd;
mod faults;
mod faults_underlay;
mod harness;
mod interop;
mod ipv6only;
mod kube;
mod masq6;
mod offload;
mod operability;
mod options;
mod readd;
mod routing;
mod skeleton;
