//! `SubnetEnv::parse`, what the CNI plugin reads from `subnet.env`.
//! Invariants: no panic; errors have a message; a parsed file has a network
//! and the subnet that goes with it; rendering it (as weftd writes the file)
//! and parsing again gives the same values — except a subnet given without its
//! network, which is not rendered, and a /32 (/128) subnet, which flannel's
//! format cannot carry (it writes the first host address, `S+1/32`).
//!
//! Input: the file's text.

use super::input;
use weft::core::subnet_env::SubnetEnv;

pub const DICT: &[&[u8]] = &[
    b"FLANNEL_NETWORK=",
    b"FLANNEL_SUBNET=",
    b"FLANNEL_IPV6_NETWORK=",
    b"FLANNEL_IPV6_SUBNET=",
    b"FLANNEL_MTU=",
    b"FLANNEL_IPMASQ=",
    b"\n",
    b"\r\n",
    b"#",
    b"=",
    b",",
    b"\"",
    b" ",
    b"true",
    b"/0",
    b"/24",
    b"/32",
    b"/64",
    b"/128",
    b"10.244.1.1",
    b"255.255.255.255",
    b"fc00::1",
    b"4294967296",
];

pub fn run(data: &[u8]) {
    let text = input::text(data);
    let env = match SubnetEnv::parse(&text) {
        Ok(env) => env,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    assert!(env.network.is_some() || env.ipv6_network.is_some());
    assert!(env.network.is_none() || env.subnet.is_some());
    assert!(env.ipv6_network.is_none() || env.ipv6_subnet.is_some());
    if let Some(s) = env.subnet {
        assert_eq!(s.addr(), s.network(), "subnets come back as networks");
    }
    let rendered = env.render();
    let back = SubnetEnv::parse(&rendered).unwrap_or_else(|e| panic!("{rendered:?}: {e}"));
    let mut want = env.clone();
    if want.network.is_none() {
        want.subnet = None;
    }
    if want.ipv6_network.is_none() {
        want.ipv6_subnet = None;
    }
    if want.subnet.is_some_and(|s| s.prefix_len() == 32) {
        want.subnet = back.subnet;
    }
    if want.ipv6_subnet.is_some_and(|s| s.prefix_len() == 128) {
        want.ipv6_subnet = back.ipv6_subnet;
    }
    assert_eq!(back, want, "{rendered:?}");
}

pub fn seeds() -> Vec<Vec<u8>> {
    [
        // flannel's CNI plugin test fixtures.
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n",
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=false\n",
        "# written by weftd\n\nFLANNEL_IPV6_NETWORK=\"fc00::/48,fd00::/48\"\n FLANNEL_IPV6_SUBNET = fc00::1/64\r\nFLANNEL_MTU=1450\nOTHER=x\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}
