//! Frames the kernel writes to the IPv6 TAP, through `NdpTable::respond` of
//! a lab table (three peers' gateways `fd00:10:244:i::`, and one address
//! whose low 24 bits are not zero). Invariant: the decision equals a
//! reference model of RFC 4861 §7.1.1/§7.2.4 and weft's rules, read at
//! fixed offsets: a valid Neighbor Solicitation for a gateway in the table
//! gets a byte-exact advertisement (Solicited + Override, or Override only
//! to `ff02::1` for a solicitation from `::`), every other frame its
//! refusal by reason, Router Solicitations and MLD included; nothing is
//! written on a refusal nor past the advertisement.
//!
//! Input: `[reply buffer size] frame...`.

use super::input::{Builder, Input};
use super::wire::{self, ETH_LEN};
use weft::core::mac::MacAddr;
use weft::core::ndp::{ADVERT_LEN, NdpRefusal, NdpTable};

/// Tokens worth inserting: the EtherType, next headers, ICMPv6 types, the
/// hop limit, solicited-node and all-nodes prefixes, the lab's addresses.
pub const DICT: &[&[u8]] = &[
    &[0x86, 0xdd],
    &[0x60, 0, 0, 0],
    &[58],
    &[255],
    &[135],
    &[133],
    &[136],
    &[143],
    &[0],
    &[44],
    &[60],
    &[1, 1],
    &[2, 1],
    &[0x33, 0x33, 0xff],
    &[0x33, 0x33, 0, 0, 0, 1],
    &[0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff],
    &[0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 2],
    &[0xfd, 0, 0, 0x10, 0x02, 0x44, 0, 3],
    &[0x0e, 0, 0, 0, 0, 1],
];

/// The lab's gateways and the MACs answered for them.
fn entries() -> [([u8; 16], [u8; 6]); 4] {
    let gateway = |i: u8| {
        let mut a = [0u8; 16];
        a[..8].copy_from_slice(&[0xfd, 0, 0, 0x10, 0x02, 0x44, 0, i]);
        (a, [0x0e, 0, 0, 0, 0, i])
    };
    let mut odd = gateway(5);
    odd.0[13..].copy_from_slice(&[0x12, 0x34, 0x56]);
    [gateway(2), gateway(3), gateway(4), odd]
}

fn table() -> NdpTable {
    let mut t = NdpTable::new();
    for (ip, mac) in entries() {
        t.insert(ip.into(), MacAddr(mac));
    }
    t
}

pub(super) fn solicited_node(target: &[u8]) -> [u8; 16] {
    let mut a = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, 0xff, 0, 0, 0];
    a[13..].copy_from_slice(&target[13..16]);
    a
}

/// The ICMPv6 checksum field for `icmp` (its own field zero) from `src` to `dst`.
fn icmp6_checksum(src: &[u8], dst: &[u8], icmp: &[u8]) -> [u8; 2] {
    (!wire::fold(wire::pseudo(src, dst, 58, icmp.len()) + wire::raw_sum(icmp))).to_be_bytes()
}

/// Where the upper layer starts in `ip` and whether a Fragment header was
/// passed; `Err(())` for a later fragment or headers that do not fit.
fn walk(ip: &[u8]) -> Result<(u8, usize, bool), ()> {
    let (mut next, mut at, mut fragment) = (ip[6], 40, false);
    loop {
        let len = match next {
            0 | 43 | 60 => 8 * (usize::from(*ip.get(at + 1).ok_or(())?) + 1),
            51 => 4 * (usize::from(*ip.get(at + 1).ok_or(())?) + 2),
            44 => 8,
            _ => return Ok((next, at, fragment)),
        };
        if at + len > ip.len() {
            return Err(());
        }
        if next == 44 {
            if wire::be16(ip, at + 2) & 0xfff8 != 0 {
                return Err(());
            }
            fragment = true;
        }
        next = ip[at];
        at += len;
    }
}

/// The advertisement the lab must write for `frame`, or why it refuses it.
fn expected(frame: &[u8], out_len: usize) -> Result<Vec<u8>, NdpRefusal> {
    use NdpRefusal::*;
    if frame.len() < ETH_LEN || wire::be16(frame, 12) != 0x86dd {
        return Err(NotNdp);
    }
    let ip = &frame[ETH_LEN..];
    if ip.len() < 40 || ip[0] >> 4 != 6 {
        return Err(NotNdp);
    }
    let (next, at, fragment) = walk(ip).map_err(|()| NotNdp)?;
    if next != 58 {
        return Err(NotNdp);
    }
    match ip.get(at) {
        Some(135) => {}
        Some(133) => return Err(RouterSolicitation),
        Some(130..=132 | 143) => return Err(Mld),
        Some(134 | 136 | 137) => return Err(OtherNdp),
        _ => return Err(NotNdp),
    }
    if fragment {
        return Err(Malformed);
    }
    if ip[7] != 255 {
        return Err(HopLimit);
    }
    let end = 40 + usize::from(wire::be16(ip, 4));
    if end > ip.len() || end < at + 24 {
        return Err(Malformed);
    }
    let msg = &ip[at..end];
    let (src, dst) = (&ip[8..24], &ip[24..40]);
    if !wire::verifies(msg, wire::pseudo(src, dst, 58, msg.len())) {
        return Err(BadChecksum);
    }
    let target = &msg[8..24];
    if msg[1] != 0 || target[0] == 0xff {
        return Err(Malformed);
    }
    let mut options = &msg[24..];
    let mut slla = false;
    while !options.is_empty() {
        let len = 8 * usize::from(*options.get(1).ok_or(Malformed)?);
        if len == 0 || len > options.len() {
            return Err(Malformed);
        }
        slla |= options[0] == 1;
        options = &options[len..];
    }
    let group = solicited_node(target);
    let unspecified = src.iter().all(|b| *b == 0);
    if unspecified {
        if dst != group || slla {
            return Err(Malformed);
        }
    } else if dst != target && dst != group {
        return Err(Misaddressed);
    }
    if frame[6] & 1 != 0 {
        return Err(Malformed);
    }
    let (_, mac) = entries()
        .into_iter()
        .find(|(gw, _)| gw == target)
        .ok_or(UnknownTarget)?;
    if out_len < ADVERT_LEN {
        return Err(NoRoom);
    }
    let (to_ip, to_mac, flags) = if unspecified {
        (
            [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x33, 0x33, 0, 0, 0, 1],
            0x20,
        )
    } else {
        let mut ip6 = [0u8; 16];
        ip6.copy_from_slice(src);
        let mut eth = [0u8; 6];
        eth.copy_from_slice(&frame[6..12]);
        (ip6, eth, 0x60)
    };
    let mut icmp = vec![136, 0, 0, 0, flags, 0, 0, 0];
    icmp.extend_from_slice(target);
    icmp.extend_from_slice(&[2, 1]);
    icmp.extend_from_slice(&mac);
    let sum = icmp6_checksum(target, &to_ip, &icmp);
    icmp[2..4].copy_from_slice(&sum);
    let mut f = to_mac.to_vec();
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0, 0, 32, 58, 255]);
    f.extend_from_slice(target);
    f.extend_from_slice(&to_ip);
    f.extend_from_slice(&icmp);
    Ok(f)
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let out_len = ADVERT_LEN - 8 + usize::from(input.u8() % 40);
    let frame = input.rest();
    let mut out = vec![0xa5u8; out_len];
    let got = table().respond(frame, &mut out);
    match expected(frame, out_len) {
        Ok(want) => {
            assert_eq!(got, Ok(ADVERT_LEN));
            assert_eq!(out[..ADVERT_LEN], want[..]);
            assert!(
                out[ADVERT_LEN..].iter().all(|b| *b == 0xa5),
                "wrote past the advertisement"
            );
        }
        Err(reason) => {
            assert_eq!(got, Err(reason));
            assert!(out.iter().all(|b| *b == 0xa5), "wrote on a refusal");
        }
    }
}

/// An IPv6 frame from the kernel (`0e:00:00:00:00:01`) carrying `icmp`
/// (checksum filled in), behind `ext` (a Hop-by-Hop header) unless empty.
pub(super) fn frame(
    eth_dst: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    hop: u8,
    ext: &[u8],
    icmp: &[u8],
) -> Vec<u8> {
    let mut icmp = icmp.to_vec();
    let sum = icmp6_checksum(&src, &dst, &icmp);
    icmp[2..4].copy_from_slice(&sum);
    let mut f = eth_dst.to_vec();
    f.extend_from_slice(&[0x0e, 0, 0, 0, 0, 1, 0x86, 0xdd, 0x60, 0, 0, 0]);
    f.extend_from_slice(&((ext.len() + icmp.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[if ext.is_empty() { 58 } else { 0 }, hop]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(ext);
    f.extend_from_slice(&icmp);
    f
}

pub(super) fn solicitation(target: [u8; 16], slla: bool) -> Vec<u8> {
    let mut icmp = vec![135, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&target);
    if slla {
        icmp.extend_from_slice(&[1, 1, 0x0e, 0, 0, 0, 0, 1]);
    }
    icmp
}

pub fn seeds() -> Vec<Vec<u8>> {
    let [(gw2, _), (gw3, mac3), (_, _), (odd, _)] = entries();
    let ours = {
        let mut a = gw2;
        a[7] = 1;
        a
    };
    let link_local = [
        0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0x0c, 0, 0, 0xff, 0xfe, 0, 0, 1,
    ];
    let group = |t: &[u8; 16]| [0x33, 0x33, 0xff, t[13], t[14], t[15]];
    let frames = [
        frame(
            group(&gw2),
            ours,
            solicited_node(&gw2),
            255,
            &[],
            &solicitation(gw2, true),
        ),
        frame(
            group(&odd),
            ours,
            solicited_node(&odd),
            255,
            &[],
            &solicitation(odd, true),
        ),
        frame(mac3, ours, gw3, 255, &[], &solicitation(gw3, false)),
        frame(
            group(&gw3),
            [0; 16],
            solicited_node(&gw3),
            255,
            &[],
            &solicitation(gw3, false),
        ),
        frame(
            group(&ours),
            ours,
            solicited_node(&ours),
            255,
            &[],
            &solicitation(ours, true),
        ),
        frame(
            [0x33, 0x33, 0, 0, 0, 2],
            link_local,
            [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            255,
            &[],
            &[133, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0x0e, 0, 0, 0, 0, 1],
        ),
        frame(
            [0x33, 0x33, 0, 0, 0, 0x16],
            link_local,
            [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16],
            1,
            &[58, 0, 5, 2, 0, 0, 1, 0],
            &[
                143, 0, 0, 0, 0, 0, 0, 1, 4, 0, 0, 0, 0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff,
                0, 0, 1,
            ],
        ),
        frame(
            mac3,
            ours,
            gw3,
            64,
            &[],
            &[128, 0, 0, 0, 0, 1, 0, 1, 9, 9, 9, 9],
        ),
    ];
    frames
        .iter()
        .enumerate()
        .map(|(i, f)| Builder::new().u8(8 + i as u8 * 5).bytes(f).build())
        .collect()
}
