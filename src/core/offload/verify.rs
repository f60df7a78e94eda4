//! Inner checksums of frames: completing the partial checksum a
//! `NEEDS_CSUM` frame from the TAP carries, and checking (and completing)
//! those of a decapsulated frame before it goes to the TAP.

use super::OffloadError;
use crate::core::checksum;
use crate::core::wire::{ip, protocol};

/// Completes a partial checksum (`NEEDS_CSUM`): sums from `csum_start` to the end
/// and stores the result at `csum_start + csum_offset`.
pub fn complete_checksum(
    frame: &mut [u8],
    csum_start: usize,
    csum_offset: usize,
) -> Result<(), OffloadError> {
    let field = csum_start
        .checked_add(csum_offset)
        .ok_or(OffloadError::Malformed)?;
    if field + 2 > frame.len() || csum_start > frame.len() {
        return Err(OffloadError::Malformed);
    }
    // The field holds the pseudo-header sum; summing over it includes it.
    let sum = checksum::sum(&frame[csum_start..]);
    let mut value = checksum::finish(sum);
    if value == [0, 0] && is_udp_at(frame, csum_start) {
        value = [0xff, 0xff]; // zero means "no checksum" in UDP
    }
    frame[field..field + 2].copy_from_slice(&value);
    Ok(())
}

/// Whether the transport header at `l4` belongs to UDP (a zero UDP checksum means "none").
fn is_udp_at(frame: &[u8], l4: usize) -> bool {
    ip::Frame::new_checked(frame).is_ok_and(|f| {
        let l = f.layout();
        l.protocol() == protocol::UDP && l.transport_offset() == l4
    })
}

/// What [`check_checksums`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Checked {
    /// IP header and transport checksums are correct (or IPv4 UDP carries none).
    Valid,
    /// The sender left the transport checksum partial; it is now complete.
    Completed,
    /// A checksum is wrong: the frame was damaged on the way.
    Invalid,
    /// Not TCP/UDP over IP (or a fragment, or not verified): left for the kernel.
    Skipped,
}

/// Checks a received frame's IPv4 header and TCP/UDP checksums, completing a
/// checksum the sender left partial.
///
/// A kernel that offloads checksums (a VXLAN device over veth, as flannel's
/// nodes in containers or namespaces are) sends inner TCP/UDP segments whose
/// checksum field holds only the pseudo-header sum, trusting "the NIC" to fill
/// it in; a receiving kernel trusts its skb state, but a frame that crossed a
/// UDP socket into userspace has lost that state. Such a field is recognised by
/// its value (the folded pseudo-header sum) and completed. With `verify`, every
/// other TCP/UDP frame is checked in full — coalesced super-frames go to the
/// kernel as "checksum to be completed", so a damaged segment must be caught
/// here (an outer UDP checksum of zero, which RFC 7348 allows, protects nothing).
pub fn check_checksums(frame: &mut [u8], verify: bool) -> Checked {
    let Ok(f) = ip::Frame::new_checked(&*frame) else {
        return Checked::Skipped;
    };
    let l = f.layout();
    if f.is_fragment() {
        return Checked::Skipped; // the checksum covers the reassembled datagram
    }
    if verify && !l.is_ipv6() && !checksum::verify(f.ip_header(), 0) {
        return Checked::Invalid;
    }
    let l4_len = f.transport_len();
    let l4 = l.transport_offset();
    if l4_len < l.transport_header_len() || l4 + l4_len > frame.len() {
        return if verify {
            Checked::Invalid
        } else {
            Checked::Skipped
        };
    }
    let value = f.transport_checksum();
    if !l.is_tcp() && value == 0 && !l.is_ipv6() {
        return Checked::Valid; // IPv4 UDP without a checksum
    }
    let pseudo = f.pseudo_header_sum(l4_len as u32);
    let end = l4 + l4_len;
    if value == pseudo as u16 {
        return match complete_checksum(&mut frame[..end], l4, l.checksum_offset()) {
            Ok(()) => Checked::Completed,
            Err(_) => Checked::Skipped,
        };
    }
    if !verify {
        return Checked::Skipped;
    }
    if checksum::verify(&frame[l4..end], pseudo) {
        Checked::Valid
    } else {
        Checked::Invalid
    }
}

/// Completes a transport checksum the sender left partial (see
/// [`check_checksums`]); returns whether it did.
pub fn complete_partial_checksum(frame: &mut [u8]) -> bool {
    check_checksums(frame, false) == Checked::Completed
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{payload, tcp4_frame};
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn partial_checksums_from_offloading_senders_are_completed_others_left_alone() {
        let good = tcp4_frame(&payload(700), 5, 0x18, 1);
        let mut partial = good.clone();
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 244, 1, 5),
            Ipv4Addr::new(10, 244, 2, 7),
            6,
            32 + 700,
        );
        partial[50..52].copy_from_slice(&(pseudo as u16).to_be_bytes());
        assert!(complete_partial_checksum(&mut partial));
        assert_eq!(partial, good);
        let mut untouched = good.clone();
        assert!(
            !complete_partial_checksum(&mut untouched),
            "a full checksum is not partial"
        );
        assert_eq!(untouched, good);
        let mut corrupt = good.clone();
        corrupt[60] ^= 0xff;
        assert!(
            !complete_partial_checksum(&mut corrupt),
            "corruption is left for the kernel to catch"
        );
        for len in 0..60 {
            let mut short = good[..len].to_vec();
            let _ = complete_partial_checksum(&mut short);
        }
    }

    #[test]
    fn check_checksums_verifies_completes_and_rejects() {
        let good = tcp4_frame(&payload(500), 5, 0x18, 1);
        assert_eq!(check_checksums(&mut good.clone(), true), Checked::Valid);
        assert_eq!(check_checksums(&mut good.clone(), false), Checked::Skipped);
        let mut bad_payload = good.clone();
        bad_payload[100] ^= 0x40;
        assert_eq!(check_checksums(&mut bad_payload, true), Checked::Invalid);
        let mut bad_ip = good.clone();
        bad_ip[22] ^= 1; // TTL
        assert_eq!(check_checksums(&mut bad_ip, true), Checked::Invalid);
        let mut short = good.clone();
        short.truncate(200);
        assert_eq!(
            check_checksums(&mut short, true),
            Checked::Invalid,
            "IP length beyond the frame"
        );
        assert_eq!(
            check_checksums(&mut [0xff; 42], true),
            Checked::Skipped,
            "not IP"
        );
    }

    #[test]
    fn complete_checksum_fills_the_field() {
        let mut f = tcp4_frame(&payload(100), 5, 0x18, 1);
        let good = f.clone();
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 244, 1, 5),
            Ipv4Addr::new(10, 244, 2, 7),
            6,
            132,
        );
        f[50..52].copy_from_slice(&(pseudo as u16).to_be_bytes());
        complete_checksum(&mut f, 34, 16).unwrap();
        assert_eq!(f, good);
        assert_eq!(
            complete_checksum(&mut f, 200, 16),
            Err(OffloadError::Malformed)
        );
        assert_eq!(
            complete_checksum(&mut f, 34, 65535),
            Err(OffloadError::Malformed)
        );
    }
}
