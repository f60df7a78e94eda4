//! The embedded directory store's records (`subnet::local::parse_record`):
//! a file named like flannel's key holding flannel's lease JSON plus
//! `"Expiration"`. Invariants: no panic; errors are classified; a parsed
//! record re-rendered with `render_record` parses to the same lease,
//! expiration included.
//!
//! Input: `file name\nfile content`.

use super::input;
use weft::subnet::local;

pub fn run(data: &[u8]) {
    let [name, text] = input::parts(data, b'\n', 2)[..] else {
        unreachable!("two parts")
    };
    let (name, text) = (input::text(name), input::text(text));
    match local::parse_record(&name, &text) {
        Ok(lease) => {
            let rendered = local::render_record(&lease);
            let again = local::parse_record(&lease.key(), &rendered)
                .unwrap_or_else(|e| panic!("{rendered}: {e}"));
            assert_eq!(again, lease, "{rendered}");
            assert_eq!(local::render_record(&again), rendered);
            super::lease::check_attrs(&lease.attrs);
        }
        Err(e) => super::lease::check_error(&e),
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    [
        "10.244.3.0-24\n{\"PublicIP\":\"192.168.0.3\",\"PublicIPv6\":null,\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:03\"},\"Expiration\":\"2027-01-15T08:00:00Z\"}",
        "10.244.4.0-24\n{\"PublicIP\":\"192.168.0.4\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:04\"},\"expiration\":\"1969-12-31T23:59:59.123456789-05:00\"}",
        "10.244.5.0-24\n{\"PublicIP\":\"192.168.0.5\",\"BackendType\":\"vxlan\",\"BackendData\":{\"VNI\":1,\"VtepMAC\":\"0e:00:00:00:00:05\"}}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
