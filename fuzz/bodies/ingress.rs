//! The datagram entry point: a UDP payload from any source through the VXLAN
//! codec and `Router::ingress`, as the RX worker does, against the lab router
//! (three peers). Invariant: the decision equals a reference model of RFC
//! 7348 and weft's source checks, so `Deliver` happens only when the flags,
//! the VNI, the sender (strict: its public IP and VTEP MAC; relaxed: a known
//! VTEP MAC) and the inner destination MAC all check. A delivered frame then
//! gets its partial checksum completed, as the worker does.
//!
//! Input: `[check][source selector][4-byte source?] datagram...`.

use super::input::{Builder, Input};
use super::wire::{self, OUR_IP, OUR_MAC};
use std::net::Ipv4Addr;
use weft::core::fixtures;
use weft::core::mac::MacAddr;
use weft::core::router::{DropReason, Ingress, SourceCheck};
use weft::core::wire::vxlan::{self, Vni};

fn source(input: &mut Input<'_>) -> Ipv4Addr {
    match input.u8() % 6 {
        0 => Ipv4Addr::new(192, 168, 100, 2),
        1 => Ipv4Addr::new(192, 168, 100, 3),
        2 => Ipv4Addr::new(192, 168, 100, 4),
        3 => OUR_IP,
        _ => {
            let b = input.take(4);
            let mut ip = [0u8; 4];
            ip[..b.len()].copy_from_slice(b);
            Ipv4Addr::from(ip)
        }
    }
}

/// What the router must decide, from RFC 7348 and DESIGN.md's receive rules.
fn expected(check: SourceCheck, src: Ipv4Addr, d: &[u8]) -> Ingress {
    let peers = wire::peers();
    if d.len() < 8 {
        return Ingress::Drop(DropReason::TooShort);
    }
    if d[0] & 0x08 == 0 {
        return Ingress::Drop(DropReason::BadFlags);
    }
    if u32::from_be_bytes([0, d[4], d[5], d[6]]) != 1 {
        return Ingress::Drop(DropReason::WrongVni);
    }
    if d.len() < 8 + 14 {
        return Ingress::Drop(DropReason::TooShort);
    }
    let inner_dst = &d[8..14];
    let inner_src = &d[14..20];
    match check {
        SourceCheck::Strict => match peers.iter().find(|p| p.public_ip == src) {
            None => return Ingress::Drop(DropReason::UnknownVtep),
            Some(p) if p.vtep_mac.0 != inner_src => {
                return Ingress::Drop(DropReason::SpoofedSourceMac);
            }
            Some(_) => {}
        },
        SourceCheck::Relaxed => {
            if !peers.iter().any(|p| p.vtep_mac.0 == inner_src) {
                return Ingress::Drop(DropReason::SpoofedSourceMac);
            }
        }
    }
    if inner_dst != OUR_MAC.0 {
        return Ingress::Drop(DropReason::NotForUs);
    }
    Ingress::Deliver
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let check = if input.u8() & 1 == 0 {
        SourceCheck::Strict
    } else {
        SourceCheck::Relaxed
    };
    let src = source(&mut input);
    let datagram = input.rest();

    // The codec on its own: a checked view never panics, and what it reads
    // is what the header says.
    match vxlan::Packet::new_checked(datagram) {
        Err(e) => {
            assert!(datagram.len() < vxlan::HEADER_LEN);
            assert_eq!(e, vxlan::Error::Truncated);
        }
        Ok(packet) => {
            assert_eq!(packet.payload(), &datagram[vxlan::HEADER_LEN..]);
            match vxlan::Repr::parse(&packet) {
                Ok(repr) => {
                    assert_ne!(datagram[0] & vxlan::FLAG_I, 0);
                    let vni = u32::from_be_bytes([0, datagram[4], datagram[5], datagram[6]]);
                    assert_eq!(repr.vni.get(), vni);
                    // Emitting the same VNI gives the canonical header, which parses back.
                    let mut buf = datagram.to_vec();
                    let mut out = vxlan::Packet::new_unchecked(&mut buf[..]);
                    repr.emit(&mut out);
                    assert_eq!(buf[..8], vxlan::header_bytes(repr.vni));
                    let again = vxlan::Packet::new_checked(&buf[..]).expect("8 bytes");
                    assert_eq!(vxlan::Repr::parse(&again), Ok(repr));
                    assert_eq!(&buf[8..], &datagram[8..]);
                }
                Err(e) => {
                    assert_eq!(datagram[0] & vxlan::FLAG_I, 0);
                    assert_eq!(e, vxlan::Error::FlagNotSet);
                }
            }
        }
    }

    let router = wire::lab_router(check);
    let got = router.ingress(src.into(), datagram);
    assert_eq!(
        got,
        expected(check, src, datagram),
        "source {src}, {check:?}"
    );
    if got == Ingress::Deliver {
        // The worker completes a partial checksum in place before the TAP write.
        let mut frame = datagram[vxlan::HEADER_LEN..].to_vec();
        super::checksum::check_partial(&mut frame);
        // Same VNI, known source: the frame's own VtepMAC check also holds.
        assert_eq!(MacAddr::from_slice(&frame), Some(OUR_MAC));
    }
}

fn datagram(vni: u32, inner: &[u8]) -> Vec<u8> {
    let mut d = vxlan::header_bytes(Vni::new(vni).expect("24 bits")).to_vec();
    d.extend_from_slice(inner);
    d
}

/// An inner frame from peer `i` to us.
fn from_peer(i: u8, mut frame: Vec<u8>) -> Vec<u8> {
    frame[..6].copy_from_slice(&OUR_MAC.0);
    frame[6..12].copy_from_slice(&[0x0e, 0, 0, 0, 0, i]);
    frame
}

pub fn seeds() -> Vec<Vec<u8>> {
    let tcp = from_peer(2, fixtures::tcp4_frame(&wire::payload(100, 1), 7, 0x18, 3));
    let mut partial = tcp.clone();
    // The partial checksum a kernel VXLAN sender with offloads leaves.
    let ip = wire::parse_ip(&partial).expect("IPv4");
    let p = wire::fold(ip.pseudo(partial.len() - ip.l4));
    partial[ip.l4 + 16..ip.l4 + 18].copy_from_slice(&p.to_be_bytes());
    let udp = from_peer(3, fixtures::udp4_frame([0; 6], [0; 6], 200));
    let arp = from_peer(
        4,
        fixtures::arp_request([0x0e, 0, 0, 0, 0, 4], [10, 244, 4, 0], [10, 244, 1, 0]),
    );
    let v6 = from_peer(2, wire::tcp6_frame(&wire::payload(64, 9), 1, 0x10));
    vec![
        Builder::new().u8(0).u8(0).bytes(&datagram(1, &tcp)).build(),
        Builder::new()
            .u8(0)
            .u8(0)
            .bytes(&datagram(1, &partial))
            .build(),
        Builder::new()
            .u8(1)
            .u8(5)
            .bytes(&[203, 0, 113, 9])
            .bytes(&datagram(1, &udp))
            .build(),
        Builder::new().u8(0).u8(2).bytes(&datagram(1, &arp)).build(),
        Builder::new().u8(0).u8(0).bytes(&datagram(1, &v6)).build(),
        Builder::new()
            .u8(0)
            .u8(1)
            .bytes(&datagram(42, &udp))
            .build(),
        Builder::new()
            .u8(0)
            .u8(3)
            .bytes(&datagram(1, &tcp[..20]))
            .build(),
    ]
}
