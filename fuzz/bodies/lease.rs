//! Lease records as the stores read them: `parse_subnet_key`,
//! `LeaseAttrs::from_json`, `LeaseAttrs::vxlan_data` and `Lease::from_record`.
//! Invariants: no panic; errors are classified (`kind`); a parsed key
//! re-rendered with `subnet_key` parses to the same subnets; a parsed lease
//! re-rendered with `to_json` parses to the same value (and renders to the
//! same bytes again); VXLAN data re-rendered parses to the same value.
//!
//! Input: `key\njson`.

use super::input;
use weft::core::lease::{self, Lease, LeaseAttrs, LeaseError, VxlanBackendData};

const KINDS: [&str; 6] = [
    "too_large",
    "bad_key",
    "invalid_json",
    "bad_public_ip",
    "foreign_backend",
    "bad_backend_data",
];

pub fn check_error(e: &LeaseError) {
    assert!(KINDS.contains(&e.kind()), "{e:?}");
    assert!(!e.to_string().is_empty());
}

pub fn check_key(key: &str) {
    match lease::parse_subnet_key(key) {
        Ok((v4, v6)) => {
            assert_eq!(v4.network(), v4.addr(), "host bits are zero");
            if let Some(v6) = v6 {
                assert_eq!(v6.network(), v6.addr());
            }
            let canonical = lease::subnet_key(v4, v6);
            assert_eq!(
                lease::parse_subnet_key(&canonical),
                Ok((v4, v6)),
                "{canonical}"
            );
        }
        Err(e) => {
            assert_eq!(e.kind(), "bad_key");
            check_error(&e);
        }
    }
}

/// Checks the round trip of attributes that parsed.
pub fn check_attrs(attrs: &LeaseAttrs) {
    let json = attrs.to_json();
    let again = LeaseAttrs::from_json(&json).unwrap_or_else(|e| panic!("{json}: {e}"));
    assert_eq!(&again, attrs, "{json}");
    assert_eq!(again.to_json(), json);
    match attrs.vxlan_data() {
        Ok(data) => check_backend_data(&data),
        Err(e) => {
            assert!(
                matches!(e.kind(), "foreign_backend" | "bad_backend_data"),
                "{e:?}"
            );
            check_error(&e);
        }
    }
}

pub fn check_backend_data(data: &VxlanBackendData) {
    let json = data.to_json();
    assert_eq!(VxlanBackendData::from_json(&json), Ok(*data), "{json}");
    let value: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    assert_eq!(value["VNI"], u64::from(data.vni));
    assert_eq!(value["VtepMAC"], data.vtep_mac.to_string());
}

pub fn run(data: &[u8]) {
    let [key, json] = input::parts(data, b'\n', 2)[..] else {
        unreachable!("two parts")
    };
    let (key, json) = (input::text(key), input::text(json));
    check_key(&key);
    match LeaseAttrs::from_json(&json) {
        Ok(attrs) => check_attrs(&attrs),
        Err(e) => check_error(&e),
    }
    match Lease::from_record(&key, &json, None) {
        Ok(l) => {
            assert_eq!(l.expiration, None);
            let again = Lease::from_record(&l.key(), &l.attrs.to_json(), None);
            assert_eq!(again.as_ref(), Ok(&l));
            assert!(!l.to_string().is_empty());
        }
        Err(e) => check_error(&e),
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    [
        // flannel's documented lease (Documentation/reservations.md).
        "10.5.34.0-24\n{\"PublicIP\":\"192.168.64.3\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"c6:d2:32:6f:8f:44\"}}",
        "10.5.34.0-24&fc00::-64\n{\"publicip\":\"10.0.0.1\",\"PublicIPv6\":\"fc00::1\",\"BACKENDTYPE\":\"vxlan\",\"backenddata\":{ \"vni\": 7, \"vtepmac\": \"0e-00-00-00-00-01\" },\"BackendV6Data\":{\"VNI\":7,\"VtepMAC\":\"0e:00:00:00:00:02\"},\"Extra\":[1,2.5e3,{\"a\":null}]}",
        "10.244.3.0-24\n{\"PublicIP\":\"10.0.0.1\",\"BackendType\":\"host-gw\"}",
        "config\n{\"Network\":\"10.244.0.0/16\"}",
        // Found by libFuzzer: numbers and key order in BackendData must survive re-rendering.
        "10.5.34.0-24\n{\"PublicIP\":\"192.168.64.3\",\"BackendType\":\"vxlan\",\"BaCkendData\":{\"VtepMAC\":\"0e:00:00:00:00:01\",\"VNI\":11111111000012743110316963455886, \"x\":[1E2,-0,\"<&>\"]}}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
