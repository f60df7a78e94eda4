//! Frames the kernel writes to the TAP, through `Router::egress` of the lab
//! router. Invariant: the decision equals a reference model — ARP requests
//! for a peer's gateway `S.0` get a byte-exact reply from that peer's VTEP
//! MAC, other ARP is dropped by reason, group destinations are never flooded,
//! and a frame is encapsulated only towards the node that announced its
//! destination MAC, on the flow hash of the inner frame.
//!
//! Input: `[reply buffer size] frame...`.

use super::input::{Builder, Input};
use super::wire;
use weft::core::arp::REPLY_LEN;
use weft::core::fixtures;
use weft::core::flow;
use weft::core::router::{DropReason, Egress, SourceCheck};

/// The reply the lab must write for an ARP frame, or why it drops it.
fn arp_expected(frame: &[u8]) -> Result<[u8; REPLY_LEN], DropReason> {
    let arp = &frame[14..];
    if arp.len() < 8 {
        return Err(DropReason::ArpMalformed);
    }
    let (hlen, plen) = (usize::from(arp[4]), usize::from(arp[5]));
    if arp.len() < 8 + 2 * hlen + 2 * plen {
        return Err(DropReason::ArpMalformed);
    }
    if wire::be16(arp, 0) != 1 || wire::be16(arp, 2) != 0x0800 || hlen != 6 || plen != 4 {
        return Err(DropReason::ArpMalformed);
    }
    if wire::be16(arp, 6) != 1 {
        return Err(DropReason::ArpMalformed); // only requests are answered
    }
    let (sender_mac, sender_ip, target_ip) = (&arp[8..14], &arp[14..18], &arp[24..28]);
    let peer = wire::peers()
        .into_iter()
        .find(|p| p.gateway().octets() == target_ip)
        .ok_or(DropReason::ArpUnknownTarget)?;
    let mut reply = [0u8; REPLY_LEN];
    reply[0..6].copy_from_slice(sender_mac);
    reply[6..12].copy_from_slice(&peer.vtep_mac.0);
    reply[12..22].copy_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    reply[22..28].copy_from_slice(&peer.vtep_mac.0);
    reply[28..32].copy_from_slice(target_ip);
    reply[32..38].copy_from_slice(sender_mac);
    reply[38..42].copy_from_slice(sender_ip);
    Ok(reply)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    // The worker's reply buffer is 128 bytes; the API asks for at least REPLY_LEN.
    let reply_len = REPLY_LEN + usize::from(input.u8() % 87);
    let frame = input.rest();
    let check = if frame.len().is_multiple_of(2) {
        SourceCheck::Strict
    } else {
        SourceCheck::Relaxed
    };
    let router = wire::lab_router(check);
    let mut reply = vec![0xa5u8; reply_len];
    let got = router.egress(frame, &mut reply);
    if frame.len() < 14 {
        assert_eq!(got, Egress::Drop(DropReason::TooShort));
        return;
    }
    if wire::be16(frame, 12) == 0x0806 {
        match arp_expected(frame) {
            Ok(want) => {
                assert_eq!(got, Egress::ArpReply { len: REPLY_LEN });
                assert_eq!(reply[..REPLY_LEN], want);
                assert!(
                    reply[REPLY_LEN..].iter().all(|b| *b == 0xa5),
                    "wrote past the reply"
                );
            }
            Err(reason) => assert_eq!(got, Egress::Drop(reason)),
        }
        return;
    }
    assert!(
        reply.iter().all(|b| *b == 0xa5),
        "a reply written for a non-ARP frame"
    );
    let dst = &frame[..6];
    if dst[0] & 1 != 0 {
        assert_eq!(got, Egress::Drop(DropReason::GroupDestination));
        return;
    }
    match wire::peers().into_iter().find(|p| p.vtep_mac.0 == dst) {
        None => assert_eq!(got, Egress::Drop(DropReason::NoFdbEntry)),
        Some(peer) => {
            let hash = flow::hash(frame);
            assert_eq!(
                got,
                Egress::Encap {
                    dst: peer.public_ip.into(),
                    flow: hash
                }
            );
            let port = flow::source_port(hash);
            assert!(port >= flow::SOURCE_PORT_MIN, "port {port}");
        }
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let to_peer = |i: u8, mut f: Vec<u8>| {
        f[..6].copy_from_slice(&[0x0e, 0, 0, 0, 0, i]);
        f
    };
    let ours = [0x0e, 0, 0, 0, 0, 1];
    let frames = [
        fixtures::arp_request(ours, [10, 244, 1, 0], [10, 244, 2, 0]),
        fixtures::arp_request(ours, [10, 244, 1, 0], [10, 244, 9, 0]),
        to_peer(2, fixtures::tcp4_frame(&wire::payload(200, 3), 1, 0x18, 1)),
        to_peer(3, fixtures::udp4_frame([0; 6], ours, 300)),
        to_peer(4, wire::tcp6_frame(&wire::payload(40, 5), 1, 0x10)),
        fixtures::udp4_frame([0x33, 0x33, 0, 0, 0, 1], ours, 60),
        fixtures::udp4_frame([0x0e, 9, 9, 9, 9, 9], ours, 60),
    ];
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| Builder::new().u8(i as u8 * 13).bytes(f).build())
        .collect()
}
