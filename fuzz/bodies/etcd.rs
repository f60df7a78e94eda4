//! The etcd store's records: `Keys::new` (flannel's `--etcd-prefix`, joined
//! with `path.Join`) and `parse_kv` (a key and value as etcd returns them).
//! Invariants: no panic; the keys are what Go's `path.Join(prefix, "config")`
//! and `path.Join(prefix, "subnets")` give (a reference `path.Clean` here);
//! a record's errors are classified; a parsed lease written back under
//! `Keys::lease` with `to_json` parses to the same lease.
//!
//! Input: `prefix \0 key \0 value`.

use super::input;
use weft::subnet::etcd::{self, Keys, Kv};

pub const DICT: &[&[u8]] = &[
    b"/",
    b"//",
    b".",
    b"..",
    b"/../",
    b"/coreos.com/network",
    b"/coreos.com/network/subnets/",
    b"subnets/",
    b"10.244.3.0-24",
    b"&fc00::-64",
    b"\0",
    b"\"PublicIP\":",
    b"\"BackendData\":",
    b"\"vxlan\"",
];

/// Go's `path.Clean`.
fn clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_owned();
    }
    let rooted = p.starts_with('/');
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if out.last().is_some_and(|l| *l != "..") {
                    out.pop();
                } else if !rooted {
                    out.push("..");
                }
            }
            name => out.push(name),
        }
    }
    let joined = out.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

/// Go's `path.Join(prefix, name)`.
fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        clean(name)
    } else {
        clean(&format!("{prefix}/{name}"))
    }
}

pub fn run(data: &[u8]) {
    let [prefix, key, value] = input::parts(data, 0, 3)[..] else {
        unreachable!("three parts")
    };
    let prefix = input::text(prefix);
    let keys = Keys::new(&prefix);
    assert_eq!(
        keys.config,
        join(&prefix, "config"),
        "config key of {prefix:?}"
    );
    assert_eq!(
        keys.subnets,
        format!("{}/", join(&prefix, "subnets")),
        "subnets of {prefix:?}"
    );
    let kv = Kv {
        key: key.to_vec(),
        value: value.to_vec(),
        lease: 0,
        mod_revision: 1,
    };
    match etcd::parse_kv(&keys, &kv) {
        Ok(lease) => {
            let back = Kv {
                key: keys.lease(&lease).into_bytes(),
                value: lease.attrs.to_json().into_bytes(),
                ..kv
            };
            assert_eq!(etcd::parse_kv(&keys, &back).as_ref(), Ok(&lease));
            super::lease::check_attrs(&lease.attrs);
        }
        Err(e) => super::lease::check_error(&e),
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let doc = r#"{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#;
    [
        (
            "/coreos.com/network",
            "/coreos.com/network/subnets/10.5.34.0-24",
            doc,
        ),
        (
            "/coreos.com/network/",
            "/coreos.com/network/subnets/10.5.34.0-24&fc00::-64",
            doc,
        ),
        ("weft//x/./", "weft/x/subnets/10.244.3.0-24", doc),
        ("/a/../b", "/b/subnets/10.244.3.0-24", doc),
        ("", "subnets/10.244.3.0-24", "{not json"),
    ]
    .iter()
    .map(|(p, k, v)| [p.as_bytes(), k.as_bytes(), v.as_bytes()].join(&0u8))
    .collect()
}
