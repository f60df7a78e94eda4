//! The tunables file (`weftd --tunables FILE`, TOML): `Tunables::parse`.
//! Invariants: no panic; a refusal has a message; an accepted file has the
//! ranges `parse` promises (batch and source_ports 1..=1024, intervals of at
//! least a second), and offloads that need the virtio header are off without it.
//!
//! Input: the file's text.

use super::input;
use weft::agent::tunables::Tunables;

pub const DICT: &[&[u8]] = &[
    b"[dataplane]\n",
    b"[agent]\n",
    b"[[dataplane]]\n",
    b"workers = ",
    b"batch = ",
    b"socket_buffer_bytes = ",
    b"source_ports = ",
    b"tap_vnet_hdr = ",
    b"tso = ",
    b"uso = ",
    b"udp_gso = ",
    b"udp_gro = ",
    b"source_check = ",
    b"resync_seconds = ",
    b"drop_log_seconds = ",
    b"\"strict\"",
    b"\"relaxed\"",
    b"true",
    b"false",
    b"0",
    b"1025",
    b"-1",
    b"18446744073709551616",
    b"\n",
    b"#",
    b"=",
    b"\"",
    b"'''",
    b"{",
    b"}",
    b"[",
    b"]",
    b"1979-05-27T07:32:00Z",
];

pub fn run(data: &[u8]) {
    let text = input::text(data);
    let t = match Tunables::parse(&text) {
        Ok(t) => t,
        Err(e) => {
            assert!(!e.is_empty());
            return;
        }
    };
    let d = &t.dataplane;
    assert!((1..=1024).contains(&d.batch), "batch {}", d.batch);
    assert!((1..=1024).contains(&d.source_ports));
    assert!(t.agent.resync_seconds >= 1 && t.agent.drop_log_seconds >= 1);
    let o = t.offloads();
    assert!(
        d.tap_vnet_hdr || (!o.tso && !o.uso),
        "TSO/USO need the virtio header"
    );
    assert!(t.workers() >= 1);
}

pub fn seeds() -> Vec<Vec<u8>> {
    [
        include_str!("../../tunables/weftd.toml"),
        "[dataplane]\ntso = false\nsource_check = \"relaxed\"\nworkers = 4\n",
        "[agent]\nresync_seconds = 1\ndrop_log_seconds = 3600\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
