//! `complete_checksum` (a `NEEDS_CSUM` frame from the TAP) and
//! `complete_partial_checksum` (a decapsulated frame whose sender left the
//! checksum partial). Invariants: only the checksum field changes; a completed
//! checksum verifies (reference RFC 1071 sum); a frame is completed exactly
//! when its field holds the folded pseudo-header sum of a well-formed
//! TCP/UDP header, and is otherwise left untouched.
//!
//! Input: `[csum_start u16][csum_offset u16] frame...`.

use super::input::{Builder, Input};
use super::wire::{self, ETH_LEN};
use weft::core::fixtures;
use weft::core::offload;

/// The checksum field `complete_partial_checksum` must complete, with the
/// range it covers and its pseudo-header sum, or `None` if it must not touch
/// the frame.
fn partial_field(frame: &[u8]) -> Option<(usize, std::ops::Range<usize>, u64)> {
    let ip = wire::parse_ip(frame)?;
    let hdr = match ip.proto {
        6 => wire::tcp_header_len(frame, ip.l4)?,
        17 if ip.l4 + 8 <= frame.len() => 8,
        _ => return None,
    };
    if ip.fragment {
        return None;
    }
    let l4_len = if ip.v6 {
        ip.ip_len - 40
    } else {
        ip.l4_len_claimed()
    };
    if l4_len < hdr || ip.l4 + l4_len > frame.len() {
        return None;
    }
    let field = ip.l4 + if ip.proto == 6 { 16 } else { 6 };
    let value = wire::be16(frame, field);
    if ip.proto == 17 && value == 0 && !ip.v6 {
        return None; // IPv4 UDP without a checksum
    }
    let pseudo = ip.pseudo(l4_len);
    (value == wire::fold(pseudo)).then_some((field, ip.l4..ip.l4 + l4_len, pseudo))
}

/// Runs `complete_partial_checksum` on `frame` and checks it against the model.
pub fn check_partial(frame: &mut [u8]) {
    let before = frame.to_vec();
    let want = partial_field(&before);
    let done = offload::complete_partial_checksum(frame);
    assert_eq!(
        done,
        want.is_some(),
        "completed? {:02x?}",
        &before[..before.len().min(80)]
    );
    match want {
        None => assert_eq!(frame, &before[..], "an untouched frame"),
        Some((field, range, pseudo)) => {
            assert_eq!(frame[..field], before[..field]);
            assert_eq!(frame[field + 2..], before[field + 2..]);
            assert!(
                wire::verifies(&frame[range], pseudo),
                "the completed checksum verifies"
            );
        }
    }
}

fn udp_at(frame: &[u8], l4: usize) -> bool {
    match frame.get(12..14) {
        Some([0x08, 0x00]) => {
            let ihl = usize::from(frame.get(ETH_LEN).map_or(0, |b| b & 0x0f)) * 4;
            frame.get(ETH_LEN + 9) == Some(&17) && l4 == ETH_LEN + ihl
        }
        Some([0x86, 0xdd]) => frame.get(ETH_LEN + 6) == Some(&17) && l4 == ETH_LEN + 40,
        _ => false,
    }
}

/// Runs `complete_checksum` and checks it against the model.
pub fn check_complete(frame: &mut [u8], start: usize, offset: usize) {
    let before = frame.to_vec();
    let field = start + offset;
    let fits = field + 2 <= frame.len();
    let got = offload::complete_checksum(frame, start, offset);
    if !fits {
        assert_eq!(got, Err(offload::OffloadError::Malformed));
        assert_eq!(frame, &before[..]);
        return;
    }
    assert_eq!(got, Ok(()));
    assert_eq!(frame[..field], before[..field]);
    assert_eq!(frame[field + 2..], before[field + 2..]);
    if offset % 2 == 1 {
        // A field off the 16-bit grid cannot hold a sum of 16-bit words (the
        // kernel never asks for one); all that holds is that nothing else changed.
        return;
    }
    let original = u64::from(wire::be16(&before, field));
    assert!(
        wire::verifies(&frame[start..], original),
        "completed over {start}.."
    );
    let mut zeroed = before.clone();
    zeroed[field..field + 2].copy_from_slice(&[0, 0]);
    let value = !wire::fold(wire::raw_sum(&zeroed[start..]) + original);
    let got = wire::be16(frame, field);
    assert!(
        got == value || (value == 0 && got == 0xffff && udp_at(&before, start)),
        "checksum {got:#06x}, want {value:#06x}"
    );
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let start = usize::from(input.u16());
    let offset = usize::from(input.u16());
    let frame = input.rest();
    check_complete(&mut frame.to_vec(), start, offset);
    check_partial(&mut frame.to_vec());
}

pub fn seeds() -> Vec<Vec<u8>> {
    let partial = |mut f: Vec<u8>, field: usize| {
        let ip = wire::parse_ip(&f).expect("IP");
        let len = if ip.v6 {
            ip.ip_len - 40
        } else {
            ip.l4_len_claimed()
        };
        let p = wire::fold(ip.pseudo(len));
        f[field..field + 2].copy_from_slice(&p.to_be_bytes());
        f
    };
    let tcp = fixtures::tcp4_frame(&wire::payload(300, 2), 9, 0x18, 1);
    let mut udp = fixtures::udp4_frame([0x0e, 0, 0, 0, 0, 1], [0x0e, 0, 0, 0, 0, 2], 120);
    udp[26..34].copy_from_slice(&[10, 244, 1, 5, 10, 244, 2, 7]);
    let ip_sum = !wire::fold(wire::raw_sum(&udp[14..34]));
    udp[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    let v6 = wire::tcp6_frame(&wire::payload(90, 4), 3, 0x10);
    let with =
        |start: u16, offset: u16, f: &[u8]| Builder::new().u16(start).u16(offset).bytes(f).build();
    vec![
        with(34, 16, &partial(tcp.clone(), 50)),
        with(34, 6, &partial(udp.clone(), 40)),
        with(54, 16, &partial(v6.clone(), 70)),
        with(34, 16, &tcp),
        with(0, 0, &fixtures::tso_superframe(&wire::payload(2000, 1))),
    ]
}
