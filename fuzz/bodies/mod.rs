//! The bodies of weft's fuzz targets: one module per target, each with a
//! `run(data: &[u8])` that feeds the bytes to the code under test and panics
//! when an invariant fails, and `seeds()`, valid inputs to start from.
//!
//! Shared, not duplicated: the libFuzzer targets in `fuzz/fuzz_targets/` (run
//! with `cargo fuzz`) and the seeded smoke test `tests/fuzz_smoke.rs` (run by
//! `cargo test` on stable) both include this directory with `#[path]`.
//!
//! The invariants are checked against small reference models written here
//! (a plain RFC 1071 checksum, header offsets read by hand), not against the
//! code under test.

// Each fuzz target binary uses one body; the rest is dead code there.
#![allow(dead_code)]
// `pub` so the items are reachable from both including crates.
#![allow(unreachable_pub)]

pub mod allocate;
pub mod backend_data;
pub mod checksum;
pub mod cni;
pub mod coalesce;
pub mod egress;
pub mod etcd;
pub mod icmp;
pub mod icmp6;
pub mod ingress;
pub mod input;
pub mod kube;
pub mod lease;
pub mod local_record;
pub mod ndp;
pub mod net_conf;
pub mod rx_batch;
pub mod split;
pub mod subnet_env;
pub mod tunables;
pub mod tx_batch;
pub mod wire;

/// A fuzz target: its name (the binary in `fuzz/fuzz_targets/`), its body,
/// its seeds, and tokens that mutations may insert.
pub struct Target {
    pub name: &'static str,
    pub run: fn(&[u8]),
    pub seeds: fn() -> Vec<Vec<u8>>,
    pub dict: &'static [&'static [u8]],
}

/// Every target.
pub const TARGETS: &[Target] = &[
    Target {
        name: "ingress",
        run: ingress::run,
        seeds: ingress::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "egress",
        run: egress::run,
        seeds: egress::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "tx_batch",
        run: tx_batch::run,
        seeds: tx_batch::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "rx_batch",
        run: rx_batch::run,
        seeds: rx_batch::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "split",
        run: split::run,
        seeds: split::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "coalesce",
        run: coalesce::run,
        seeds: coalesce::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "checksum",
        run: checksum::run,
        seeds: checksum::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "icmp",
        run: icmp::run,
        seeds: icmp::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "icmp6",
        run: icmp6::run,
        seeds: icmp6::seeds,
        dict: wire::FRAME_DICT,
    },
    Target {
        name: "ndp",
        run: ndp::run,
        seeds: ndp::seeds,
        dict: ndp::DICT,
    },
    Target {
        name: "allocate",
        run: allocate::run,
        seeds: allocate::seeds,
        dict: &[],
    },
    Target {
        name: "lease",
        run: lease::run,
        seeds: lease::seeds,
        dict: wire::JSON_DICT,
    },
    Target {
        name: "backend_data",
        run: backend_data::run,
        seeds: backend_data::seeds,
        dict: wire::JSON_DICT,
    },
    Target {
        name: "local_record",
        run: local_record::run,
        seeds: local_record::seeds,
        dict: wire::JSON_DICT,
    },
    Target {
        name: "etcd",
        run: etcd::run,
        seeds: etcd::seeds,
        dict: etcd::DICT,
    },
    Target {
        name: "net_conf",
        run: net_conf::run,
        seeds: net_conf::seeds,
        dict: wire::JSON_DICT,
    },
    Target {
        name: "subnet_env",
        run: subnet_env::run,
        seeds: subnet_env::seeds,
        dict: subnet_env::DICT,
    },
    Target {
        name: "kube",
        run: kube::run,
        seeds: kube::seeds,
        dict: wire::JSON_DICT,
    },
    Target {
        name: "cni",
        run: cni::run,
        seeds: cni::seeds,
        dict: wire::JSON_DICT,
    },
    Target {
        name: "tunables",
        run: tunables::run,
        seeds: tunables::seeds,
        dict: tunables::DICT,
    },
];
