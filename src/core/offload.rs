//! Segmentation and coalescing offloads, without I/O.
//!
//! With `IFF_VNET_HDR` the TAP hands weft TCP (and UDP) super-frames of up to
//! 64 KiB, described by a `virtio_net_hdr`; every VXLAN datagram on the wire
//! must still carry one MSS-sized segment. [`split`] cuts a super-frame into
//! segments — per-segment headers are written into a caller-owned arena, the
//! payloads stay where they are, so the shell sends them scatter-gather with
//! one UDP GSO `sendmsg` and no payload is copied in userspace.
//!
//! On receive, [`Coalescer`] merges consecutive TCP segments of a flow back
//! into one super-frame with a GSO virtio header, so one TAP write carries up
//! to 64 KiB, as the kernel's own GRO would.
//!
//! Written here rather than taken from a crate: tun-rs ports wireguard-go's
//! offload code but assumes L3 (TUN) packets at offset 0, while a TAP carries
//! Ethernet frames; and weft needs the VXLAN header in every segment header.
//! The rules follow the kernel's GSO/GRO (and wireguard-go's port of them).

use super::checksum;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::ops::Range;

/// Length of `struct virtio_net_hdr` (no `num_buffers`).
pub const VNET_HDR_LEN: usize = 10;
const ETH_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
const PROTO_ICMP: u8 = 1;
/// The largest IP packet a super-frame may describe.
const MAX_IP_LEN: usize = 65535;

/// `virtio_net_hdr.flags`: the checksum at `csum_start + csum_offset` must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `virtio_net_hdr.flags`: the checksums were verified.
pub const F_DATA_VALID: u8 = 2;

/// `virtio_net_hdr.gso_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoType {
    None,
    TcpV4,
    TcpV6,
    UdpL4,
    /// A type weft does not handle (UFO, tunnel GSO).
    Other(u8),
}

impl GsoType {
    const ECN: u8 = 0x80;

    fn from_wire(v: u8) -> GsoType {
        match v & !Self::ECN {
            0 => GsoType::None,
            1 => GsoType::TcpV4,
            4 => GsoType::TcpV6,
            5 => GsoType::UdpL4,
            other => GsoType::Other(other),
        }
    }

    fn to_wire(self) -> u8 {
        match self {
            GsoType::None => 0,
            GsoType::TcpV4 => 1,
            GsoType::TcpV6 => 4,
            GsoType::UdpL4 => 5,
            GsoType::Other(v) => v,
        }
    }
}

/// A `virtio_net_hdr` (little-endian on the wire, as the TAP uses it on LE hosts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: GsoType,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    pub const NONE: VnetHdr = VnetHdr {
        flags: 0,
        gso_type: GsoType::None,
        hdr_len: 0,
        gso_size: 0,
        csum_start: 0,
        csum_offset: 0,
    };

    pub fn parse(b: &[u8]) -> Option<VnetHdr> {
        let b = b.get(..VNET_HDR_LEN)?;
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: GsoType::from_wire(b[1]),
            hdr_len: u(2),
            gso_size: u(4),
            csum_start: u(6),
            csum_offset: u(8),
        })
    }

    pub fn emit(&self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type.to_wire();
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b
    }
}

/// Why a frame from the TAP could not be prepared for the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffloadError {
    /// Headers shorter than they claim, or offsets outside the frame.
    Malformed,
    /// A GSO type or protocol weft does not segment.
    Unsupported,
}

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
    if value == [0, 0] && frame_is_udp_at(frame, csum_start) {
        value = [0xff, 0xff];
    }
    frame[field..field + 2].copy_from_slice(&value);
    Ok(())
}

/// Whether the transport header at `l4` belongs to UDP (a zero UDP checksum means "none").
fn frame_is_udp_at(frame: &[u8], l4: usize) -> bool {
    match ethertype(frame) {
        Some(ETHERTYPE_IPV4) => {
            frame.get(ETH_LEN + 9) == Some(&PROTO_UDP) && l4 == ETH_LEN + ipv4_ihl(frame)
        }
        Some(ETHERTYPE_IPV6) => frame.get(ETH_LEN + 6) == Some(&PROTO_UDP) && l4 == ETH_LEN + 40,
        _ => false,
    }
}

fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn ipv4_ihl(frame: &[u8]) -> usize {
    usize::from(frame.get(ETH_LEN).map_or(0, |b| b & 0x0f)) * 4
}

fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

fn be32(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
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
    let Ok(l) = layout(frame) else {
        return Checked::Skipped;
    };
    if !l.v6 && be16(frame, ETH_LEN + 6) & 0x3fff != 0 {
        return Checked::Skipped; // a fragment: the checksum covers the reassembled datagram
    }
    if verify && !l.v6 && !checksum::verify(&frame[ETH_LEN..l.l4], 0) {
        return Checked::Invalid;
    }
    let l4_len = if l.v6 {
        usize::from(be16(frame, ETH_LEN + 4))
    } else {
        usize::from(be16(frame, ETH_LEN + 2)).saturating_sub(l.l4 - ETH_LEN)
    };
    if l4_len < l.hdr_len - l.l4 || l.l4 + l4_len > frame.len() {
        return if verify {
            Checked::Invalid
        } else {
            Checked::Skipped
        };
    }
    let field = if l.proto == PROTO_TCP {
        l.l4 + 16
    } else {
        l.l4 + 6
    };
    let value = be16(frame, field);
    if l.proto == PROTO_UDP && value == 0 && !l.v6 {
        return Checked::Valid; // IPv4 UDP without a checksum
    }
    let pseudo = pseudo_sum(frame, &l, l4_len);
    let end = l.l4 + l4_len;
    if value == pseudo as u16 {
        return match complete_checksum(&mut frame[..end], l.l4, field - l.l4) {
            Ok(()) => Checked::Completed,
            Err(_) => Checked::Skipped,
        };
    }
    if !verify {
        return Checked::Skipped;
    }
    if checksum::verify(&frame[l.l4..end], pseudo) {
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

/// The layout of an Ethernet + IP + TCP/UDP frame's headers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    v6: bool,
    /// Offset of the transport header.
    l4: usize,
    /// Length of all headers (payload starts here).
    hdr_len: usize,
    proto: u8,
}

/// Parses the headers of `frame` (we do not trust `hdr_len` from the kernel:
/// on the forwarding path it can cover the whole first packet).
fn layout(frame: &[u8]) -> Result<Layout, OffloadError> {
    let (v6, l4, proto) = match ethertype(frame) {
        Some(ETHERTYPE_IPV4) => {
            let ihl = ipv4_ihl(frame);
            if ihl < 20 || frame.len() < ETH_LEN + ihl || frame[ETH_LEN] >> 4 != 4 {
                return Err(OffloadError::Malformed);
            }
            (false, ETH_LEN + ihl, frame[ETH_LEN + 9])
        }
        Some(ETHERTYPE_IPV6) => {
            if frame.len() < ETH_LEN + 40 || frame[ETH_LEN] >> 4 != 6 {
                return Err(OffloadError::Malformed);
            }
            // Extension headers are not segmented here.
            (true, ETH_LEN + 40, frame[ETH_LEN + 6])
        }
        _ => return Err(OffloadError::Unsupported),
    };
    let hdr_len = match proto {
        PROTO_TCP => {
            let off = usize::from(frame.get(l4 + 12).ok_or(OffloadError::Malformed)? >> 4) * 4;
            if off < 20 {
                return Err(OffloadError::Malformed);
            }
            l4 + off
        }
        PROTO_UDP => l4 + 8,
        _ => return Err(OffloadError::Unsupported),
    };
    if hdr_len > frame.len() {
        return Err(OffloadError::Malformed);
    }
    Ok(Layout {
        v6,
        l4,
        hdr_len,
        proto,
    })
}

/// Longest headers [`split`] handles: Ethernet, IPv4 with options (60) and
/// TCP with options (60).
pub const MAX_HEADERS: usize = ETH_LEN + 60 + 60;

/// One segment produced by [`split`]: where it lies in the arena, prefix,
/// headers and payload, exactly as it goes on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub wire: Range<usize>,
}

/// The result of splitting one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Number of segments appended.
    pub count: usize,
    /// Size of each segment on the wire (prefix + headers + gso_size), the
    /// last one possibly shorter: the UDP GSO segment size.
    pub segment_len: usize,
}

fn pseudo_sum(frame: &[u8], l: &Layout, l4_len: usize) -> u32 {
    if l.v6 {
        let src = Ipv6Addr::from(
            <[u8; 16]>::try_from(&frame[ETH_LEN + 8..ETH_LEN + 24]).unwrap_or([0; 16]),
        );
        let dst = Ipv6Addr::from(
            <[u8; 16]>::try_from(&frame[ETH_LEN + 24..ETH_LEN + 40]).unwrap_or([0; 16]),
        );
        checksum::pseudo_header_v6(src, dst, l.proto, l4_len as u32)
    } else {
        let src = Ipv4Addr::new(
            frame[ETH_LEN + 12],
            frame[ETH_LEN + 13],
            frame[ETH_LEN + 14],
            frame[ETH_LEN + 15],
        );
        let dst = Ipv4Addr::new(
            frame[ETH_LEN + 16],
            frame[ETH_LEN + 17],
            frame[ETH_LEN + 18],
            frame[ETH_LEN + 19],
        );
        checksum::pseudo_header_v4(src, dst, l.proto, l4_len as u32)
    }
}

/// Cuts the super-frame `frame` (described by `hdr`) into wire segments.
///
/// For each segment, `prefix` (the VXLAN header), the fixed-up
/// Ethernet/IP/TCP-or-UDP headers and the segment's payload are appended to
/// `arena`, and a [`Segment`] pointing at them is appended to `out`.
/// Consecutive segments are contiguous, so a run of them is one slice: the
/// kernel copies one buffer per UDP GSO send much faster than ninety small
/// ones (the copy in `udp_sendmsg` took half the CPU with a header/payload
/// iovec per segment), and the payload is summed from L1 right after it is
/// copied. Checksums of every segment are computed in full: they must be
/// right on the wire.
pub fn split(
    frame: &[u8],
    hdr: &VnetHdr,
    prefix: &[u8],
    arena: &mut Vec<u8>,
    out: &mut Vec<Segment>,
) -> Result<Split, OffloadError> {
    let l = layout(frame)?;
    let want_proto = match hdr.gso_type {
        GsoType::TcpV4 | GsoType::TcpV6 => PROTO_TCP,
        GsoType::UdpL4 => PROTO_UDP,
        GsoType::None | GsoType::Other(_) => return Err(OffloadError::Unsupported),
    };
    if l.proto != want_proto
        || (hdr.gso_type == GsoType::TcpV4 && l.v6)
        || (hdr.gso_type == GsoType::TcpV6 && !l.v6)
    {
        return Err(OffloadError::Malformed);
    }
    let mss = usize::from(hdr.gso_size);
    if mss == 0 {
        return Err(OffloadError::Malformed);
    }
    let payload = l.hdr_len..frame.len();
    // Each segment's length must fit its 16-bit IPv4 total length (IPv6:
    // payload length) field.
    let largest = l.hdr_len + mss.min(payload.len()) - if l.v6 { l.l4 } else { ETH_LEN };
    if largest > MAX_IP_LEN {
        return Err(OffloadError::Malformed);
    }
    let count = payload.len().div_ceil(mss).max(1);
    let headers = &frame[..l.hdr_len];
    let first_id = if l.v6 { 0 } else { be16(frame, ETH_LEN + 4) };
    let first_seq = if l.proto == PROTO_TCP {
        be32(frame, l.l4 + 4)
    } else {
        0
    };
    let tcp_flags = if l.proto == PROTO_TCP {
        frame[l.l4 + 13]
    } else {
        0
    };
    // The sums of what every segment's headers share, taken once from the
    // original headers with the per-segment fields zeroed; each segment then
    // adds its own field values (RFC 1071 §2, incremental). Summing each
    // segment's freshly written headers instead stalled on store forwarding
    // and cost more than the payload sums.
    let mut shared = [0u8; MAX_HEADERS];
    let shared = shared.get_mut(..l.hdr_len).ok_or(OffloadError::Malformed)?;
    shared.copy_from_slice(headers);
    if l.v6 {
        shared[ETH_LEN + 4..ETH_LEN + 6].fill(0); // payload length
    } else {
        shared[ETH_LEN + 2..ETH_LEN + 6].fill(0); // total length, ID
        shared[ETH_LEN + 10..ETH_LEN + 12].fill(0); // checksum
    }
    if l.proto == PROTO_TCP {
        shared[l.l4 + 4..l.l4 + 8].fill(0); // sequence number
        shared[l.l4 + 12..l.l4 + 14].fill(0); // data offset and flags
        shared[l.l4 + 16..l.l4 + 18].fill(0); // checksum
    } else {
        shared[l.l4 + 4..l.l4 + 8].fill(0); // length, checksum
    }
    // IPv6 has no header checksum.
    let ip_shared = if l.v6 {
        0
    } else {
        checksum::sum(&shared[ETH_LEN..l.l4])
    };
    let l4_shared = checksum::combine(
        checksum::sum(&shared[l.l4..l.hdr_len]),
        pseudo_sum(frame, &l, 0),
    );
    let offset_byte = if l.proto == PROTO_TCP {
        u32::from(frame[l.l4 + 12]) << 8
    } else {
        0
    };
    for i in 0..count {
        let start = payload.start + i * mss;
        let end = (start + mss).min(payload.end);
        let seg_payload = &frame[start..end];
        let at = arena.len();
        arena.extend_from_slice(prefix);
        let h = arena.len();
        arena.extend_from_slice(headers);
        let seg = &mut arena[h..];
        let l4_len = l.hdr_len - l.l4 + seg_payload.len();
        if l.v6 {
            seg[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            let ip_len = (l.hdr_len - ETH_LEN + seg_payload.len()) as u16;
            // The kernel's GSO increments the IP ID per segment.
            let id = first_id.wrapping_add(i as u16);
            seg[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&ip_len.to_be_bytes());
            seg[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&id.to_be_bytes());
            let ip_sum = checksum::combine(ip_shared, u32::from(ip_len) + u32::from(id));
            seg[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&checksum::finish(ip_sum));
        }
        // The pseudo-header's length, then the fields this segment sets.
        let mut own = l4_len as u32;
        let csum_field = if l.proto == PROTO_TCP {
            let seq = first_seq.wrapping_add((i * mss) as u32);
            seg[l.l4 + 4..l.l4 + 8].copy_from_slice(&seq.to_be_bytes());
            let last = i + 1 == count;
            let mut flags = tcp_flags;
            if !last {
                flags &= !(0x01 | 0x08); // FIN and PSH only on the last segment
            }
            if i > 0 {
                flags &= !0x80; // CWR only on the first
            }
            seg[l.l4 + 13] = flags;
            own += (seq >> 16) + (seq & 0xffff) + (offset_byte | u32::from(flags));
            l.l4 + 16
        } else {
            seg[l.l4 + 4..l.l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            own += l4_len as u32;
            l.l4 + 6
        };
        let head_sum = checksum::combine(l4_shared, own);
        let p = arena.len();
        arena.extend_from_slice(seg_payload);
        let sum = checksum::combine(head_sum, checksum::sum(&arena[p..]));
        let mut value = checksum::finish(sum);
        if value == [0, 0] && l.proto == PROTO_UDP {
            value = [0xff, 0xff];
        }
        arena[h + csum_field..h + csum_field + 2].copy_from_slice(&value);
        out.push(Segment {
            wire: at..arena.len(),
        });
    }
    Ok(Split {
        count,
        segment_len: prefix.len() + l.hdr_len + mss,
    })
}

/// Where a received inner frame lives: `slot` is the caller's buffer index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    pub slot: u32,
    pub start: u32,
    pub end: u32,
}

impl FrameRef {
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Largest headers kept for a coalesced frame: vnet + Ethernet + IPv6 + TCP with options.
const MAX_HEADER: usize = VNET_HDR_LEN + ETH_LEN + 40 + 60;
/// How many flows may be open at once in one batch.
const MAX_OPEN: usize = 8;
/// Most payload pieces in one merged write: the shell writes the header and
/// the pieces with one `writev` of a fixed-size array, so a long run of small
/// segments (a flow with a small MSS) is cut into several merges.
pub const MAX_MERGED_PARTS: usize = 64;

/// One TAP write the coalescer produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// An uncoalesced frame, written after an all-zero virtio header.
    Single(FrameRef),
    /// A coalesced super-frame: `header` (virtio header + fixed-up headers), then the
    /// payload ranges of `parts` in order.
    Merged { header: usize, parts: Range<usize> },
}

#[derive(Clone, Debug)]
struct Open {
    /// Flow identity: Ethernet header, IP addresses and TCP ports, and everything
    /// that must match (IP TOS/TTL/flags, TCP options, ack).
    key: FlowKey,
    header: usize,
    first: FrameRef,
    /// Index of this flow's list of payload pieces in `Coalescer::pools`.
    pool: usize,
    layout: Layout,
    mss: usize,
    next_seq: u32,
    payload_len: usize,
    closed: bool,
    last_flags: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct FlowKey {
    bytes: [u8; MAX_HEADER],
    len: usize,
}

/// Coalesces the TCP segments of a batch of received frames.
///
/// Feed frames in arrival order with [`Coalescer::push`], then call
/// [`Coalescer::finish`] and write [`Coalescer::writes`] in order: frames of one
/// flow keep their order; a frame that cannot join an open super-frame closes it.
#[derive(Debug)]
pub struct Coalescer {
    headers: Vec<[u8; MAX_HEADER]>,
    header_lens: Vec<usize>,
    /// Payload ranges of merged frames (slot + payload bounds), contiguous per write.
    parts: Vec<FrameRef>,
    writes: Vec<Write>,
    open: Vec<(usize, Open)>,
    /// One list of pieces per open flow, reused across batches.
    pools: Vec<Vec<FrameRef>>,
    free: Vec<usize>,
    max_payload: usize,
    /// Whether runs of UDP datagrams of one flow are coalesced too.
    udp: bool,
}

impl Default for Coalescer {
    fn default() -> Self {
        Coalescer::new()
    }
}

impl Coalescer {
    pub fn new() -> Coalescer {
        Coalescer::with_capacity(0)
    }

    /// A coalescer that handles batches of up to `frames` frames without allocating.
    pub fn with_capacity(frames: usize) -> Coalescer {
        Coalescer {
            headers: vec![[0u8; MAX_HEADER]; frames],
            header_lens: Vec::with_capacity(frames),
            parts: Vec::with_capacity(frames),
            writes: Vec::with_capacity(frames),
            open: Vec::with_capacity(MAX_OPEN),
            pools: (0..MAX_OPEN).map(|_| Vec::with_capacity(frames)).collect(),
            free: (0..MAX_OPEN).collect(),
            max_payload: MAX_IP_LEN,
            udp: false,
        }
    }

    /// Also coalesces UDP: consecutive datagrams of one flow with the same
    /// payload length (the last may be shorter) become one super-frame with a
    /// UDP GSO header, which the kernel cuts back into the same datagrams when
    /// it delivers or forwards them. Turn it on only when the TAP negotiated
    /// USO (the kernel takes UDP GSO frames from it).
    pub fn set_udp(&mut self, on: bool) {
        self.udp = on;
    }

    /// Forgets the previous batch (keeps allocations).
    pub fn clear(&mut self) {
        self.header_lens.clear();
        self.parts.clear();
        self.writes.clear();
        while !self.open.is_empty() {
            let (_, o) = self.open.remove(0);
            self.free.push(o.pool);
        }
    }

    /// The writes of the batch, in order.
    pub fn writes(&self) -> &[Write] {
        &self.writes
    }

    /// The virtio header + headers of a merged write.
    pub fn header(&self, index: usize) -> &[u8] {
        &self.headers[index][..self.header_lens[index]]
    }

    /// The payload pieces of a merged write.
    pub fn parts(&self, parts: &Range<usize>) -> &[FrameRef] {
        &self.parts[parts.clone()]
    }

    /// Offers one received frame (`bytes` is its content, `at` where it lives).
    pub fn push(&mut self, bytes: &[u8], at: FrameRef) {
        let Some((key, layout)) = flow_key(bytes, self.udp) else {
            // Not coalescable (not TCP or UDP, or IP options, Ethernet padding,
            // a fragment, DF clear, a UDP datagram without checksum). If it is
            // a segment of an open flow, that flow is written first, so the
            // flow keeps its order.
            if let Ok(l) = layout(bytes)
                && let Some(p) = self.open_flow(bytes, &l)
            {
                self.close(p);
            }
            self.writes.push(Write::Single(at));
            return;
        };
        let tcp = layout.proto == PROTO_TCP;
        let payload = bytes.len() - layout.hdr_len;
        let (seq, flags) = if tcp {
            (be32(bytes, layout.l4 + 4), bytes[layout.l4 + 13])
        } else {
            (0, 0)
        };
        // Only plain ACK (+PSH) data segments coalesce; anything else goes alone,
        // after closing its flow so order is kept. UDP has no sequence: the
        // order of arrival is the order written.
        let mergeable = payload > 0 && flags & !(0x10 | 0x08) == 0;
        let pos = self.open_flow(bytes, &layout);
        if let Some(p) = pos {
            let o = &mut self.open[p].1;
            let fits = mergeable
                && o.key == key
                && !o.closed
                && (!tcp || seq == o.next_seq)
                && payload <= o.mss
                && self.pools[o.pool].len() < MAX_MERGED_PARTS
                && o.layout.hdr_len - ETH_LEN + o.payload_len + payload <= self.max_payload;
            if fits {
                self.pools[o.pool].push(FrameRef {
                    slot: at.slot,
                    start: at.start + layout.hdr_len as u32,
                    end: at.end,
                });
                o.payload_len += payload;
                o.next_seq = seq.wrapping_add(payload as u32);
                o.last_flags = flags;
                if payload < o.mss || flags & 0x08 != 0 {
                    o.closed = true;
                }
                return;
            }
            self.close(p);
        }
        if !mergeable {
            self.writes.push(Write::Single(at));
            return;
        }
        if self.open.len() == MAX_OPEN {
            self.close(0);
        }
        let header = self.header_lens.len();
        if self.headers.len() <= header {
            self.headers.push([0u8; MAX_HEADER]);
        }
        self.headers[header][VNET_HDR_LEN..VNET_HDR_LEN + layout.hdr_len]
            .copy_from_slice(&bytes[..layout.hdr_len]);
        self.header_lens.push(VNET_HDR_LEN + layout.hdr_len);
        let pool = self.free.pop().expect("a free pool per open flow");
        self.pools[pool].clear();
        self.pools[pool].push(FrameRef {
            slot: at.slot,
            start: at.start + layout.hdr_len as u32,
            end: at.end,
        });
        // The write's place in the output is taken now, so flows keep their order.
        let index = self.writes.len();
        self.writes.push(Write::Single(at));
        self.open.push((
            index,
            Open {
                key,
                header,
                first: at,
                pool,
                layout,
                mss: payload,
                next_seq: seq.wrapping_add(payload as u32),
                payload_len: payload,
                closed: flags & 0x08 != 0,
                last_flags: flags,
            },
        ));
    }

    /// The open merge of the flow `bytes` belongs to, told apart as the
    /// kernel's GRO does: same Ethernet header, IP addresses and TCP ports. A
    /// segment of that flow that cannot join it (another ack, TTL, options, a
    /// control segment) closes it, so no segment overtakes an earlier one.
    fn open_flow(&self, bytes: &[u8], l: &Layout) -> Option<usize> {
        if l.proto != PROTO_TCP && l.proto != PROTO_UDP {
            return None;
        }
        let addrs = if l.v6 {
            ETH_LEN + 8..ETH_LEN + 40
        } else {
            ETH_LEN + 12..ETH_LEN + 20
        };
        self.open.iter().position(|(_, o)| {
            let k = &o.key.bytes;
            o.layout.v6 == l.v6
                && o.layout.proto == l.proto
                && k[..ETH_LEN] == bytes[..ETH_LEN]
                && k[addrs.clone()] == bytes[addrs.clone()]
                && k[o.layout.l4..o.layout.l4 + 4] == bytes[l.l4..l.l4 + 4]
        })
    }

    /// Closes every open super-frame; call once after the last `push`.
    pub fn finish(&mut self) {
        while !self.open.is_empty() {
            self.close(0);
        }
    }

    fn close(&mut self, pos: usize) {
        let (index, o) = self.open.remove(pos);
        self.free.push(o.pool);
        if self.pools[o.pool].len() == 1 {
            // Nothing joined: the frame goes out as it came (kernel verifies it).
            self.writes[index] = Write::Single(o.first);
            return;
        }
        let l = o.layout;
        let h = &mut self.headers[o.header];
        let frame = &mut h[VNET_HDR_LEN..VNET_HDR_LEN + l.hdr_len];
        let l4_len = l.hdr_len - l.l4 + o.payload_len;
        if l.v6 {
            frame[ETH_LEN + 4..ETH_LEN + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            let ip_len = (l.hdr_len - ETH_LEN + o.payload_len) as u16;
            frame[ETH_LEN + 2..ETH_LEN + 4].copy_from_slice(&ip_len.to_be_bytes());
            frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&[0, 0]);
            let ip_sum = checksum::finish(checksum::sum(&frame[ETH_LEN..l.l4]));
            frame[ETH_LEN + 10..ETH_LEN + 12].copy_from_slice(&ip_sum);
        }
        let (gso_type, csum_offset) = if l.proto == PROTO_TCP {
            frame[l.l4 + 13] = o.last_flags;
            (if l.v6 { GsoType::TcpV6 } else { GsoType::TcpV4 }, 16)
        } else {
            // The UDP length covers the whole run; the kernel rewrites it (and
            // adjusts the checksum) per datagram when it segments.
            frame[l.l4 + 4..l.l4 + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            (GsoType::UdpL4, 6)
        };
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented.
        let pseudo = pseudo_sum(frame, &l, l4_len) as u16;
        let field = l.l4 + usize::from(csum_offset);
        frame[field..field + 2].copy_from_slice(&pseudo.to_be_bytes());
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: l.hdr_len as u16,
            gso_size: o.mss as u16,
            csum_start: l.l4 as u16,
            csum_offset,
        };
        h[..VNET_HDR_LEN].copy_from_slice(&vnet.emit());
        let start = self.parts.len();
        self.parts.extend_from_slice(&self.pools[o.pool]);
        self.writes[index] = Write::Merged {
            header: o.header,
            parts: start..self.parts.len(),
        };
    }
}

/// The flow key of a frame that may join a super-frame, and its layout:
/// its headers with the fields that differ between segments of one flow
/// zeroed (IP lengths, IDs and checksum; TCP sequence, flags and checksum; UDP
/// length and checksum). Everything else (MACs, addresses, ports, TOS, TTL,
/// ack, window, options) must be equal for two frames to merge.
///
/// `None` when the frame cannot be coalesced: not TCP (or UDP, when `udp`),
/// IP options, Ethernet padding, a fragment, IPv4 without DF (the IDs would
/// matter), headers too long; for UDP also a length field that does not
/// describe exactly this datagram, or no checksum (an IPv4 datagram sent
/// without one stays as it came: coalescing would have the kernel fill one in).
/// Built in place: the key is large and this runs once per received frame.
fn flow_key(bytes: &[u8], udp: bool) -> Option<(FlowKey, Layout)> {
    let l = layout(bytes).ok()?;
    let tcp = l.proto == PROTO_TCP;
    if !(tcp || (udp && l.proto == PROTO_UDP)) || l.hdr_len + VNET_HDR_LEN > MAX_HEADER {
        return None;
    }
    if l.v6 {
        // Payload length must describe exactly this frame (no padding, no jumbograms).
        if usize::from(be16(bytes, ETH_LEN + 4)) != bytes.len() - ETH_LEN - 40 {
            return None;
        }
    } else {
        let ip = &bytes[ETH_LEN..];
        if l.l4 != ETH_LEN + 20 || usize::from(be16(ip, 2)) != bytes.len() - ETH_LEN {
            return None; // IP options, or Ethernet padding
        }
        let frag = be16(ip, 6);
        if frag & 0x3fff != 0 || frag & 0x4000 == 0 {
            return None; // fragments, or DF clear (IDs would matter)
        }
    }
    if !tcp
        && (usize::from(be16(bytes, l.l4 + 4)) != bytes.len() - l.l4 || be16(bytes, l.l4 + 6) == 0)
    {
        return None;
    }
    let mut key = FlowKey {
        bytes: [0; MAX_HEADER],
        len: l.hdr_len,
    };
    key.bytes[..l.hdr_len].copy_from_slice(&bytes[..l.hdr_len]);
    let k = &mut key.bytes;
    if l.v6 {
        k[ETH_LEN + 4..ETH_LEN + 6].fill(0);
    } else {
        k[ETH_LEN + 2..ETH_LEN + 6].fill(0);
        k[ETH_LEN + 10..ETH_LEN + 12].fill(0);
    }
    k[l.l4 + 4..l.l4 + 8].fill(0);
    if tcp {
        k[l.l4 + 13] = 0;
        k[l.l4 + 16..l.l4 + 18].fill(0);
    }
    Some((key, l))
}

/// The ICMP "fragmentation needed" (type 3 code 4) answering an IPv4 frame too big
/// for the underlay, addressed back to its sender with the overlay MTU, written
/// into `out` as an Ethernet frame for the TAP. Returns its length, or `None`
/// when the frame is not IPv4 with DF set (or is itself ICMP error-worthy only as
/// an echo). Source address: the original destination, as the kernel's bridged
/// tunnels do.
pub fn icmp_frag_needed(frame: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    if ethertype(frame)? != ETHERTYPE_IPV4 {
        return None;
    }
    let ihl = ipv4_ihl(frame);
    let ip = frame.get(ETH_LEN..ETH_LEN + ihl)?;
    if ihl < 20 || be16(ip, 6) & 0x4000 == 0 || be16(ip, 6) & 0x1fff != 0 {
        return None; // no DF, or a non-first fragment
    }
    if ip[9] == PROTO_ICMP {
        // Never answer an ICMP error with an ICMP error.
        let icmp_type = *frame.get(ETH_LEN + ihl)?;
        if !matches!(icmp_type, 0 | 8 | 13 | 14 | 15 | 16) {
            return None;
        }
    }
    // Quote the IP header and the first 8 bytes of its payload (RFC 792).
    let quoted = (ihl + 8).min(frame.len() - ETH_LEN);
    let total = ETH_LEN + 20 + 8 + quoted;
    let out = out.get_mut(..total)?;
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[0..6]);
    out[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
    let o = &mut out[ETH_LEN..];
    o[0] = 0x45;
    o[1] = 0xc0;
    o[2..4].copy_from_slice(&((20 + 8 + quoted) as u16).to_be_bytes());
    o[4..8].copy_from_slice(&[0, 0, 0, 0]);
    o[8] = 64;
    o[9] = PROTO_ICMP;
    o[10..12].copy_from_slice(&[0, 0]);
    o[12..16].copy_from_slice(&ip[16..20]);
    o[16..20].copy_from_slice(&ip[12..16]);
    let ip_sum = checksum::finish(checksum::sum(&o[..20]));
    o[10..12].copy_from_slice(&ip_sum);
    let icmp = &mut o[20..];
    icmp[0] = 3;
    icmp[1] = 4;
    icmp[2..4].copy_from_slice(&[0, 0]);
    icmp[4..6].copy_from_slice(&[0, 0]);
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    icmp[8..8 + quoted].copy_from_slice(&frame[ETH_LEN..ETH_LEN + quoted]);
    let sum = checksum::finish(checksum::sum(&icmp[..8 + quoted]));
    icmp[2..4].copy_from_slice(&sum);
    Some(total)
}

/// The size of the IP packet on the underlay that carries `frame_len` bytes of
/// inner frame: outer IPv4 + UDP + VXLAN headers added.
pub fn outer_len(frame_len: usize) -> usize {
    frame_len + 20 + 8 + super::wire::vxlan::HEADER_LEN
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::core::fixtures::tcp4_frame;

    fn verify_tcp4(seg: &[u8]) {
        assert!(checksum::verify(&seg[14..34], 0), "IP checksum");
        let ip_len = usize::from(be16(seg, 16));
        assert_eq!(ip_len, seg.len() - 14, "IP length");
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(seg[26], seg[27], seg[28], seg[29]),
            Ipv4Addr::new(seg[30], seg[31], seg[32], seg[33]),
            6,
            (ip_len - 20) as u32,
        );
        assert!(checksum::verify(&seg[34..], pseudo), "TCP checksum");
    }

    fn payload(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn vnet_header_round_trip() {
        let h = crate::core::fixtures::tso_vnet_hdr(1398);
        assert_eq!(VnetHdr::parse(&h.emit()), Some(h));
        assert_eq!(h.emit(), [1, 1, 66, 0, 0x76, 0x05, 34, 0, 16, 0]);
        assert_eq!(VnetHdr::parse(&[0; 9]), None);
        assert_eq!(
            VnetHdr::parse(&[0, 0x81, 0, 0, 0, 0, 0, 0, 0, 0])
                .unwrap()
                .gso_type,
            GsoType::TcpV4
        );
    }

    #[test]
    fn tso_superframe_splits_into_valid_segments() {
        let data = payload(64000);
        let mut frame = tcp4_frame(&data, 1000, 0x18, 77);
        // As the kernel hands it over: partial checksum = pseudo-header sum only.
        frame[50..52].copy_from_slice(&[0, 0]);
        let hdr = crate::core::fixtures::tso_vnet_hdr(1398);
        let mut arena = Vec::new();
        let mut segs = Vec::new();
        let prefix = [0x08, 0, 0, 0, 0, 0, 1, 0];
        let split = split(&frame, &hdr, &prefix, &mut arena, &mut segs).unwrap();
        assert_eq!(split.count, 46);
        assert_eq!(split.segment_len, 8 + 66 + 1398);
        let mut rebuilt = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let wire = arena[s.wire.clone()].to_vec();
            assert_eq!(&wire[..8], &prefix);
            if i > 0 {
                assert_eq!(
                    s.wire.start,
                    segs[i - 1].wire.end,
                    "segments are contiguous"
                );
            }
            let seg = &wire[8..];
            verify_tcp4(seg);
            assert_eq!(be32(seg, 38), 1000 + (i * 1398) as u32, "seq");
            assert_eq!(be16(seg, 18), 77 + i as u16, "IP ID");
            let psh = seg[47] & 0x08 != 0;
            assert_eq!(psh, i == segs.len() - 1, "PSH only on the last");
            if i + 1 < segs.len() {
                assert_eq!(wire.len(), split.segment_len);
            }
            rebuilt.extend_from_slice(&seg[66..]);
        }
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn every_flag_and_ipv6_segment_checksums_right() {
        // IPv4, FIN|PSH|ACK|CWR: FIN and PSH only on the last, CWR only on
        // the first, and every checksum right with the flags changed.
        let data = payload(7000);
        let frame = tcp4_frame(&data, 0xffff_f000, 0x99, 0xfffe);
        let hdr = crate::core::fixtures::tso_vnet_hdr(1000);
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        split(&frame, &hdr, &[], &mut arena, &mut segs).unwrap();
        assert_eq!(segs.len(), 7);
        for (i, s) in segs.iter().enumerate() {
            let seg = &arena[s.wire.clone()];
            verify_tcp4(seg);
            let want = 0x10 | if i == 0 { 0x80 } else { 0 } | if i == 6 { 0x09 } else { 0 };
            assert_eq!(seg[47], want, "flags of segment {i}");
            assert_eq!(
                be16(seg, 18),
                0xfffe_u16.wrapping_add(i as u16),
                "IP ID wraps"
            );
        }
        // IPv6 with a timestamp option (32-byte TCP header).
        let data = payload(5000);
        let (src, dst) = ([0xfd00, 0, 0, 0, 0, 0, 0, 1], [0xfd00, 0, 0, 0, 0, 0, 0, 2]);
        let mut f = vec![0x0e, 0, 0, 0, 0, 1, 0x0e, 0, 0, 0, 0, 2, 0x86, 0xdd];
        f.extend_from_slice(&[0x60, 0, 0, 0]);
        f.extend_from_slice(&((32 + data.len()) as u16).to_be_bytes());
        f.extend_from_slice(&[6, 64]);
        for w in src.iter().chain(&dst) {
            f.extend_from_slice(&u16::to_be_bytes(*w));
        }
        f.extend_from_slice(&[0x1f, 0x90, 0xc3, 0x50, 0, 0, 0, 7, 0, 0, 0, 9]);
        f.extend_from_slice(&[0x80, 0x99, 0x01, 0xf6, 0, 0, 0, 0]);
        f.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        f.extend_from_slice(&data);
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::TcpV6,
            hdr_len: 86,
            gso_size: 1200,
            csum_start: 54,
            csum_offset: 16,
        };
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        split(&f, &hdr, &[], &mut arena, &mut segs).unwrap();
        assert_eq!(segs.len(), 5);
        let mut rebuilt = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            let seg = &arena[s.wire.clone()];
            let l4_len = usize::from(be16(seg, 18));
            assert_eq!(l4_len, seg.len() - 54, "payload length");
            let pseudo = checksum::pseudo_header_v6(
                std::net::Ipv6Addr::from(src),
                std::net::Ipv6Addr::from(dst),
                6,
                l4_len as u32,
            );
            assert!(checksum::verify(&seg[54..], pseudo), "TCP checksum of {i}");
            assert_eq!(be32(seg, 58), 7 + (i * 1200) as u32, "seq");
            let want = 0x10 | if i == 0 { 0x80 } else { 0 } | if i == 4 { 0x09 } else { 0 };
            assert_eq!(seg[67], want, "flags of segment {i}");
            rebuilt.extend_from_slice(&seg[86..]);
        }
        assert_eq!(rebuilt, data);
    }

    #[test]
    fn uso_superframe_splits_into_udp_datagrams() {
        let f = crate::core::fixtures::udp4_frame(
            [0x0e, 0, 0, 0, 0, 2],
            [0x0e, 0, 0, 0, 0, 1],
            14 + 28 + 5000,
        );
        let hdr = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::UdpL4,
            hdr_len: 42,
            gso_size: 1400,
            csum_start: 34,
            csum_offset: 6,
        };
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        let s = split(&f, &hdr, &[], &mut arena, &mut segs).unwrap();
        assert_eq!(s.count, 4);
        for seg in &segs {
            let wire = arena[seg.wire.clone()].to_vec();
            assert!(checksum::verify(&wire[14..34], 0));
            let udp_len = usize::from(be16(&wire, 38));
            assert_eq!(udp_len, wire.len() - 34);
            let pseudo = checksum::pseudo_header_v4(
                Ipv4Addr::new(10, 244, 1, 5),
                Ipv4Addr::new(10, 244, 2, 7),
                17,
                udp_len as u32,
            );
            assert!(checksum::verify(&wire[34..], pseudo));
        }
    }

    #[test]
    fn split_refuses_segments_whose_length_does_not_fit_the_ip_header() {
        // Found by the split fuzz target (beyond the 64 KiB a TAP read
        // holds): a 65 535-byte gso_size over a larger frame gave segments
        // whose IP length field was truncated to 16 bits.
        let frame = crate::core::fixtures::tso_superframe(&payload(66_000));
        let hdr = |gso_size| VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GsoType::TcpV4,
            hdr_len: 66,
            gso_size,
            csum_start: 34,
            csum_offset: 16,
        };
        let (mut arena, mut out) = (Vec::new(), Vec::new());
        assert_eq!(
            split(&frame, &hdr(65535), &[], &mut arena, &mut out),
            Err(OffloadError::Malformed)
        );
        assert!(arena.is_empty() && out.is_empty());
        // The largest segment that fits: 65535 - 20 - 32 bytes of payload.
        let split = split(&frame, &hdr(65535 - 52), &[], &mut arena, &mut out).unwrap();
        assert_eq!(split.count, 2);
        let first = &arena[out[0].wire.clone()];
        assert_eq!(be16(first, 16), 65535);
    }

    #[test]
    fn split_refuses_garbage_without_panicking() {
        let hdr = crate::core::fixtures::tso_vnet_hdr(1398);
        let good = tcp4_frame(&payload(3000), 1, 0x10, 1);
        for len in 0..70 {
            let (mut a, mut s) = (Vec::new(), Vec::new());
            let _ = split(&good[..len], &hdr, &[], &mut a, &mut s);
        }
        let zero_mss = VnetHdr { gso_size: 0, ..hdr };
        assert_eq!(
            split(&good, &zero_mss, &[], &mut Vec::new(), &mut Vec::new()),
            Err(OffloadError::Malformed)
        );
        let udp_claim = VnetHdr {
            gso_type: GsoType::UdpL4,
            ..hdr
        };
        assert_eq!(
            split(&good, &udp_claim, &[], &mut Vec::new(), &mut Vec::new()),
            Err(OffloadError::Malformed)
        );
        let mut bad_off = good.clone();
        bad_off[46] = 0x10; // TCP data offset 4 bytes
        assert_eq!(
            split(&bad_off, &hdr, &[], &mut Vec::new(), &mut Vec::new()),
            Err(OffloadError::Malformed)
        );
    }

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
    fn a_flow_of_tiny_segments_is_cut_at_max_parts() {
        let segs: Vec<Vec<u8>> = (0..200u32)
            .map(|i| tcp4_frame(&payload(100), i * 100, 0x10, i as u16))
            .collect();
        let (buf, refs) = frames_of(&segs);
        let mut c = Coalescer::with_capacity(200);
        for r in &refs {
            c.push(&buf[r.range()], *r);
        }
        c.finish();
        let mut total = 0;
        for w in c.writes() {
            match w {
                Write::Merged { parts, .. } => {
                    assert!(parts.len() <= MAX_MERGED_PARTS);
                    total += parts.len();
                }
                Write::Single(_) => total += 1,
            }
        }
        assert_eq!(total, 200, "every segment written once");
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

    fn frames_of(segments: &[Vec<u8>]) -> (Vec<u8>, Vec<FrameRef>) {
        let mut buf = Vec::new();
        let mut refs = Vec::new();
        for s in segments {
            let start = buf.len() as u32;
            buf.extend_from_slice(s);
            refs.push(FrameRef {
                slot: 0,
                start,
                end: buf.len() as u32,
            });
        }
        (buf, refs)
    }

    fn render(c: &Coalescer, buf: &[u8], w: &Write) -> (Option<VnetHdr>, Vec<u8>) {
        match w {
            Write::Single(r) => (None, buf[r.range()].to_vec()),
            Write::Merged { header, parts } => {
                let h = c.header(*header);
                let mut out = h[VNET_HDR_LEN..].to_vec();
                for p in c.parts(parts) {
                    out.extend_from_slice(&buf[p.range()]);
                }
                (VnetHdr::parse(h), out)
            }
        }
    }

    /// A UDP/IPv4 datagram (DF set) with IP ID `id`, source port `sport` and
    /// `data` as payload, both checksums correct.
    fn udp_datagram(data: &[u8], id: u16, sport: u16) -> Vec<u8> {
        let mut f = crate::core::fixtures::udp4_frame(
            [0x0e, 0, 0, 0, 0, 2],
            [0x0e, 0, 0, 0, 0, 1],
            42 + data.len(),
        );
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[34..36].copy_from_slice(&sport.to_be_bytes());
        f[42..].copy_from_slice(data);
        let ip_sum = checksum::finish(checksum::sum(&f[14..34]));
        f[24..26].copy_from_slice(&ip_sum);
        let pseudo = checksum::pseudo_header_v4(
            Ipv4Addr::new(10, 244, 1, 5),
            Ipv4Addr::new(10, 244, 2, 7),
            17,
            (8 + data.len()) as u32,
        );
        let sum = checksum::combine(pseudo, checksum::sum(&f[34..]));
        f[40..42].copy_from_slice(&checksum::finish(sum));
        f
    }

    fn coalesce(segments: &[Vec<u8>], udp: bool) -> (Coalescer, Vec<u8>) {
        let (buf, refs) = frames_of(segments);
        let mut c = Coalescer::new();
        c.set_udp(udp);
        for r in &refs {
            c.push(&buf[r.range()], *r);
        }
        c.finish();
        (c, buf)
    }

    #[test]
    fn udp_datagrams_of_a_flow_coalesce_and_split_back_into_the_same_datagrams() {
        let data = payload(10 * 200 + 50);
        let originals: Vec<Vec<u8>> = data
            .chunks(200)
            .enumerate()
            .map(|(i, c)| udp_datagram(c, 7 + i as u16, 12345))
            .collect();
        let (c, buf) = coalesce(&originals, true);
        assert_eq!(c.writes().len(), 1, "{:?}", c.writes());
        let (hdr, frame) = render(&c, &buf, &c.writes()[0]);
        let hdr = hdr.unwrap();
        assert_eq!(
            (hdr.gso_type, hdr.flags, hdr.gso_size, hdr.hdr_len),
            (GsoType::UdpL4, F_NEEDS_CSUM, 200, 42)
        );
        assert_eq!((hdr.csum_start, hdr.csum_offset), (34, 6));
        assert!(checksum::verify(&frame[14..34], 0), "IP header checksum");
        assert_eq!(usize::from(be16(&frame, 16)), frame.len() - 14);
        assert_eq!(usize::from(be16(&frame, 38)), frame.len() - 34);
        // What the kernel does with it: segment by gso_size, fixing lengths,
        // IDs and checksums. weft's own splitter does the same.
        let (mut arena, mut segs) = (Vec::new(), Vec::new());
        let s = split(&frame, &hdr, &[], &mut arena, &mut segs).unwrap();
        assert_eq!(s.count, originals.len());
        for (seg, original) in segs.iter().zip(&originals) {
            let wire = arena[seg.wire.clone()].to_vec();
            assert_eq!(&wire, original);
        }
    }

    #[test]
    fn udp_runs_need_the_switch_a_checksum_one_flow_and_equal_lengths() {
        let d = |n: usize, id: u16, sport: u16| udp_datagram(&payload(n), id, sport);
        let singles = |c: &Coalescer| c.writes().iter().all(|w| matches!(w, Write::Single(_)));
        let run = vec![d(100, 1, 1000), d(100, 2, 1000), d(100, 3, 1000)];
        // Off (no USO on the TAP): every datagram alone.
        let (c, _) = coalesce(&run, false);
        assert!(singles(&c) && c.writes().len() == 3);
        // No checksum (IPv4 allows it): left alone, not given one.
        let mut bare = run.clone();
        for f in &mut bare {
            f[40..42].fill(0);
        }
        let (c, _) = coalesce(&bare, true);
        assert!(singles(&c) && c.writes().len() == 3);
        // DF clear: the IDs would matter.
        let mut no_df = run.clone();
        for f in &mut no_df {
            f[20] = 0;
        }
        let (c, _) = coalesce(&no_df, true);
        assert!(singles(&c) && c.writes().len() == 3);
        // Another port is another flow; a longer datagram after a shorter one
        // starts a new run; frames keep their order.
        let mixed = vec![
            d(100, 1, 1000),
            d(100, 2, 1000),
            d(100, 1, 2000),
            d(60, 3, 1000),
            d(100, 4, 1000),
            d(100, 5, 1000),
        ];
        let (buf, refs) = frames_of(&mixed);
        let mut c = Coalescer::new();
        c.set_udp(true);
        for r in &refs {
            c.push(&buf[r.range()], *r);
        }
        c.finish();
        let rendered: Vec<Vec<u8>> = c
            .writes()
            .iter()
            .flat_map(|w| {
                let (hdr, frame) = render(&c, &buf, w);
                match hdr {
                    None => vec![frame],
                    Some(hdr) => {
                        let (mut arena, mut segs) = (Vec::new(), Vec::new());
                        split(&frame, &hdr, &[], &mut arena, &mut segs).unwrap();
                        segs.iter()
                            .map(|s| arena[s.wire.clone()].to_vec())
                            .collect()
                    }
                }
            })
            .collect();
        // Per flow, the datagrams come out in the order they went in.
        let of_port = |frames: &[Vec<u8>], port: u16| -> Vec<Vec<u8>> {
            frames
                .iter()
                .filter(|f| be16(f, 34) == port)
                .map(|f| f[42..].to_vec())
                .collect()
        };
        assert_eq!(of_port(&rendered, 1000), of_port(&mixed, 1000));
        assert_eq!(of_port(&rendered, 2000), of_port(&mixed, 2000));
        assert!(
            c.writes().iter().any(|w| matches!(w, Write::Merged { .. })),
            "{:?}",
            c.writes()
        );
        // A TCP segment in between is another flow: it neither joins nor
        // ends the UDP run.
        let tcp = tcp4_frame(&payload(100), 1, 0x10, 9);
        let (c, buf) = coalesce(&[run[0].clone(), tcp.clone(), run[1].clone()], true);
        assert_eq!(c.writes().len(), 2, "{:?}", c.writes());
        let (hdr, _) = render(&c, &buf, &c.writes()[0]);
        assert_eq!(hdr.map(|h| h.gso_type), Some(GsoType::UdpL4));
        assert_eq!(render(&c, &buf, &c.writes()[1]), (None, tcp));
    }

    #[test]
    fn consecutive_segments_coalesce_into_one_gso_write() {
        let data = payload(44 * 1398);
        let segs: Vec<Vec<u8>> = data
            .chunks(1398)
            .enumerate()
            .map(|(i, c)| {
                tcp4_frame(
                    c,
                    5000 + (i * 1398) as u32,
                    if i == 43 { 0x18 } else { 0x10 },
                    i as u16,
                )
            })
            .collect();
        let (buf, refs) = frames_of(&segs);
        let mut c = Coalescer::new();
        for r in &refs {
            c.push(&buf[r.range()], *r);
        }
        c.finish();
        assert_eq!(c.writes().len(), 1);
        let (hdr, frame) = render(&c, &buf, &c.writes()[0]);
        let hdr = hdr.unwrap();
        assert_eq!(hdr.gso_type, GsoType::TcpV4);
        assert_eq!(
            (hdr.gso_size, hdr.hdr_len, hdr.csum_start, hdr.csum_offset),
            (1398, 66, 34, 16)
        );
        assert_eq!(hdr.flags, F_NEEDS_CSUM);
        assert!(checksum::verify(&frame[14..34], 0), "IP header checksum");
        assert_eq!(usize::from(be16(&frame, 16)), frame.len() - 14);
        assert_eq!(&frame[66..], &data[..]);
        assert_eq!(frame[47] & 0x08, 0x08, "PSH of the last segment kept");
        // Completing the partial checksum yields a valid TCP checksum.
        let mut full = frame.clone();
        complete_checksum(&mut full, 34, 16).unwrap();
        verify_tcp4(&full);
    }

    #[test]
    fn a_small_mss_run_is_cut_into_merges_the_tap_write_can_carry() {
        // Found by the coalesce fuzz target: 120 consecutive 88-byte segments
        // (a flow with MSS 88) became one merge of 120 parts, more than the
        // RX worker's fixed `writev` array holds (it indexed past the end).
        let data = payload(120 * 88);
        let segs: Vec<Vec<u8>> = data
            .chunks(88)
            .enumerate()
            .map(|(i, c)| tcp4_frame(c, 1 + (i * 88) as u32, 0x10, i as u16))
            .collect();
        let (buf, refs) = frames_of(&segs);
        let mut c = Coalescer::with_capacity(refs.len());
        for r in &refs {
            c.push(&buf[r.range()], *r);
        }
        c.finish();
        let mut joined = Vec::new();
        for w in c.writes() {
            let Write::Merged { parts, .. } = w else {
                panic!("{w:?}")
            };
            assert!(parts.len() <= MAX_MERGED_PARTS, "{} parts", parts.len());
            let (_, frame) = render(&c, &buf, w);
            joined.extend_from_slice(&frame[66..]);
        }
        assert_eq!(c.writes().len(), 120usize.div_ceil(MAX_MERGED_PARTS));
        assert_eq!(joined, data);
    }

    #[test]
    fn gaps_other_flows_and_control_segments_break_runs_but_keep_order() {
        let a0 = tcp4_frame(&payload(100), 0, 0x10, 0);
        let a1 = tcp4_frame(&payload(100), 100, 0x10, 1);
        let gap = tcp4_frame(&payload(100), 300, 0x10, 2);
        let mut other = tcp4_frame(&payload(100), 0, 0x10, 0);
        other[36] ^= 1; // another source port
        let fin = tcp4_frame(&payload(0), 400, 0x11, 3);
        let arp = vec![0xffu8; 42];
        let (buf, refs) = frames_of(&[a0, other, a1, gap, fin, arp]);
        let mut c = Coalescer::new();
        for r in &refs {
            c.push(&buf[r.range()], *r);
        }
        c.finish();
        let w = c.writes();
        assert!(
            matches!(w[0], Write::Merged { ref parts, .. } if parts.len() == 2),
            "{w:?}"
        );
        assert_eq!(w[1], Write::Single(refs[1]));
        assert_eq!(w[2], Write::Single(refs[3]));
        assert_eq!(w[3], Write::Single(refs[4]));
        assert_eq!(w[4], Write::Single(refs[5]));
        assert_eq!(w.len(), 5);
    }

    #[test]
    fn a_flows_segments_that_cannot_join_never_overtake_each_other() {
        // Found by the coalesce fuzz target: a segment of an open flow that
        // could not join it (here: IP length 0, i.e. padding) was written at
        // once while the flow stayed open, so the flow's next segment joined
        // the merge and was written before it.
        let a0 = tcp4_frame(&payload(100), 0, 0x10, 0);
        let mut padded = tcp4_frame(&payload(100), 0, 0x00, 0);
        padded[16..18].copy_from_slice(&[0, 0]);
        let a1 = tcp4_frame(&payload(100), 100, 0x10, 1);
        // The same with a segment carrying a newer ack (another merge key)
        // that overtook an older one on the wire: kept in arrival order.
        let x = tcp4_frame(&payload(100), 1000, 0x10, 2);
        let mut y = tcp4_frame(&payload(100), 1200, 0x10, 3);
        y[45] = 1; // ack + 1
        let z = tcp4_frame(&payload(100), 1100, 0x10, 4);
        // And DF clear: not coalescable, still in order.
        let mut no_df = tcp4_frame(&payload(100), 1300, 0x10, 5);
        no_df[20] = 0;
        let w = tcp4_frame(&payload(100), 1300, 0x10, 6);
        let (buf, refs) = frames_of(&[a0, padded, a1, x, y, z, no_df, w]);
        let mut c = Coalescer::new();
        for r in &refs {
            c.push(&buf[r.range()], *r);
        }
        c.finish();
        let order: Vec<Write> = refs.iter().map(|r| Write::Single(*r)).collect();
        assert_eq!(c.writes(), &order[..]);
    }

    #[test]
    fn icmp_frag_needed_for_df_ipv4() {
        let frame = tcp4_frame(&payload(3000), 1, 0x10, 9);
        let mut out = [0u8; 128];
        let n = icmp_frag_needed(&frame, 1450, &mut out).unwrap();
        let o = &out[..n];
        assert_eq!(&o[0..6], &frame[6..12]);
        assert_eq!(&o[26..30], &frame[30..34], "from the original destination");
        assert_eq!(&o[30..34], &frame[26..30], "to the original source");
        assert!(checksum::verify(&o[14..34], 0));
        assert_eq!((o[34], o[35]), (3, 4));
        assert_eq!(be16(o, 40), 1450);
        assert!(checksum::verify(&o[34..], 0));
        assert_eq!(&o[42..62], &frame[14..34], "quotes the original header");
        let mut no_df = frame.clone();
        no_df[20] = 0;
        assert_eq!(icmp_frag_needed(&no_df, 1450, &mut out), None);
        assert_eq!(icmp_frag_needed(&frame[..20], 1450, &mut out), None);
    }
}
