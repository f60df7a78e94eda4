//! `VxlanBackendData::from_json`: the `BackendData` of a lease or the
//! `backend-data` node annotation. Invariants: no panic; errors are
//! `bad_backend_data`; parsed data re-rendered with `to_json` is flannel's
//! exact shape and parses to the same value.
//!
//! Input: the JSON text.

use super::input;
use weft::core::lease::VxlanBackendData;

pub fn run(data: &[u8]) {
    let text = input::text(data);
    match VxlanBackendData::from_json(&text) {
        Ok(d) => {
            super::lease::check_backend_data(&d);
            assert_eq!(
                d.to_json(),
                format!("{{\"VNI\":{},\"VtepMAC\":\"{}\"}}", d.vni, d.vtep_mac)
            );
        }
        Err(e) => {
            assert_eq!(e.kind(), "bad_backend_data", "{e:?}");
            super::lease::check_error(&e);
        }
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    [
        "{\"VNI\":1,\"VtepMAC\":\"12:c6:65:89:b4:e3\"}",
        "{\"vni\":4294967295,\"vtepmac\":\"12-C6-65-89-B4-E3\",\"x\":{}}",
        "{\"VtepMAC\":\"12:c6:65:89:b4:e3\",\"VNI\":null}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
