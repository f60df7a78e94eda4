//! Receive coalescing (GRO): the decapsulated frames of a batch, in arrival
//! order, merged per flow into super-frames the TAP takes with one write and
//! a GSO virtio header — consecutive TCP segments, and (with USO) runs of
//! equal-size UDP datagrams — as the kernel's own GRO would.

use super::MAX_IP_LEN;
use super::vnet::{F_NEEDS_CSUM, GsoType, VNET_HDR_LEN, VnetHdr};
use crate::core::wire::ethernet;
use crate::core::wire::ip::{self, tcp_flags};
use std::ops::Range;

/// Where a received inner frame lives: `slot` is the caller's buffer index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameRef {
    /// The caller's buffer the frame is in.
    pub slot: u32,
    /// Where the frame starts in the buffer.
    pub start: u32,
    /// Where it ends.
    pub end: u32,
}

impl FrameRef {
    /// The frame's bytes in its buffer.
    pub fn range(&self) -> Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Largest headers kept for a coalesced frame: vnet + Ethernet + IPv6 + TCP with options.
const MAX_HEADER: usize = VNET_HDR_LEN + ethernet::HEADER_LEN + 40 + 60;
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
    Merged {
        /// Index of the header, for [`Coalescer::header`].
        header: usize,
        /// The payload pieces, for [`Coalescer::parts`].
        parts: Range<usize>,
    },
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
    layout: ip::Layout,
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
    /// A coalescer that allocates as batches need.
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
        let Some((key, frame)) = flow_key(bytes, self.udp) else {
            // Not coalescable (not TCP or UDP, or IP options, Ethernet padding,
            // a fragment, DF clear, a UDP datagram without checksum). If it is
            // a segment of an open flow, that flow is written first, so the
            // flow keeps its order.
            if let Ok(frame) = ip::Frame::new_checked(bytes)
                && let Some(p) = self.open_flow(&frame)
            {
                self.close(p);
            }
            self.writes.push(Write::Single(at));
            return;
        };
        let layout = frame.layout();
        let tcp = layout.is_tcp();
        let hdr_len = layout.headers_len();
        let payload = bytes.len() - hdr_len;
        let (seq, flags) = if tcp {
            (frame.tcp_seq(), frame.tcp_flags())
        } else {
            (0, 0)
        };
        // Only plain ACK (+PSH) data segments coalesce; anything else goes alone,
        // after closing its flow so order is kept. UDP has no sequence: the
        // order of arrival is the order written.
        let mergeable = payload > 0 && flags & !(tcp_flags::ACK | tcp_flags::PSH) == 0;
        let pos = self.open_flow(&frame);
        if let Some(p) = pos {
            let o = &mut self.open[p].1;
            let fits = mergeable
                && o.key == key
                && !o.closed
                && (!tcp || seq == o.next_seq)
                && payload <= o.mss
                && self.pools[o.pool].len() < MAX_MERGED_PARTS
                && o.layout.headers_len() - ethernet::HEADER_LEN + o.payload_len + payload
                    <= self.max_payload;
            if fits {
                self.pools[o.pool].push(FrameRef {
                    slot: at.slot,
                    start: at.start + hdr_len as u32,
                    end: at.end,
                });
                o.payload_len += payload;
                o.next_seq = seq.wrapping_add(payload as u32);
                o.last_flags = flags;
                if payload < o.mss || flags & tcp_flags::PSH != 0 {
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
        self.headers[header][VNET_HDR_LEN..VNET_HDR_LEN + hdr_len].copy_from_slice(frame.headers());
        self.header_lens.push(VNET_HDR_LEN + hdr_len);
        // Invariant: at most MAX_OPEN flows are open (one was closed above if
        // all were), and each open flow holds exactly one pool.
        let pool = self.free.pop().expect("a free pool per open flow");
        self.pools[pool].clear();
        self.pools[pool].push(FrameRef {
            slot: at.slot,
            start: at.start + hdr_len as u32,
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
                closed: flags & tcp_flags::PSH != 0,
                last_flags: flags,
            },
        ));
    }

    /// The open merge of the flow `frame` belongs to, told apart as the
    /// kernel's GRO does: same Ethernet header, IP addresses and TCP ports. A
    /// segment of that flow that cannot join it (another ack, TTL, options, a
    /// control segment) closes it, so no segment overtakes an earlier one.
    fn open_flow(&self, frame: &ip::Frame<&[u8]>) -> Option<usize> {
        let l = frame.layout();
        self.open.iter().position(|(_, o)| {
            let k = &o.key.bytes;
            let l4 = o.layout.transport_offset();
            o.layout.is_ipv6() == l.is_ipv6()
                && o.layout.protocol() == l.protocol()
                && k[..ethernet::HEADER_LEN] == *frame.ethernet_header()
                && k[l.addresses()] == *frame.addresses()
                && k[l4..l4 + 4] == *frame.ports()
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
        let mut frame =
            ip::Frame::new_unchecked(&mut h[VNET_HDR_LEN..VNET_HDR_LEN + l.headers_len()], l);
        let l4_len = l.transport_header_len() + o.payload_len;
        frame.set_ip_len_for(l4_len);
        if !l.is_ipv6() {
            frame.fill_ipv4_checksum();
        }
        let gso_type = if l.is_tcp() {
            frame.set_tcp_flags(o.last_flags);
            if l.is_ipv6() {
                GsoType::TcpV6
            } else {
                GsoType::TcpV4
            }
        } else {
            // The UDP length covers the whole run; the kernel rewrites it (and
            // adjusts the checksum) per datagram when it segments.
            frame.set_udp_len(l4_len as u16);
            GsoType::UdpL4
        };
        // CHECKSUM_PARTIAL: the field holds the pseudo-header sum, not complemented.
        let pseudo = frame.pseudo_header_sum(l4_len as u32) as u16;
        frame.set_transport_checksum(pseudo.to_be_bytes());
        let vnet = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type,
            hdr_len: l.headers_len() as u16,
            gso_size: o.mss as u16,
            csum_start: l.transport_offset() as u16,
            csum_offset: l.checksum_offset() as u16,
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

/// The flow key of a frame that may join a super-frame, and the frame's
/// view: its headers with the fields that differ between segments of one
/// flow zeroed (IP lengths, IDs and checksum; TCP sequence, flags and
/// checksum; UDP length and checksum). Everything else (MACs, addresses,
/// ports, TOS, TTL, ack, window, options) must be equal for two frames to
/// merge.
///
/// `None` when the frame cannot be coalesced: not TCP (or UDP, when `udp`),
/// IP options, Ethernet padding, a fragment, IPv4 without DF (the IDs would
/// matter), headers too long; for UDP also a length field that does not
/// describe exactly this datagram, or no checksum (an IPv4 datagram sent
/// without one stays as it came: coalescing would have the kernel fill one in).
/// Built in place: the key is large and this runs once per received frame.
fn flow_key(bytes: &[u8], udp: bool) -> Option<(FlowKey, ip::Frame<&[u8]>)> {
    let frame = ip::Frame::new_checked(bytes).ok()?;
    let l = frame.layout();
    let tcp = l.is_tcp();
    if !(tcp || udp) || l.headers_len() + VNET_HDR_LEN > MAX_HEADER {
        return None;
    }
    // The IP length must describe exactly this frame (no Ethernet padding,
    // no IPv6 jumbograms).
    if frame.ip_len() != bytes.len() - ethernet::HEADER_LEN {
        return None;
    }
    if !l.is_ipv6() && (l.ip_header_len() != 20 || frame.is_fragment() || !frame.dont_frag()) {
        return None; // IP options, fragments, or DF clear (IDs would matter)
    }
    if !tcp
        && (usize::from(frame.udp_len()) != bytes.len() - l.transport_offset()
            || frame.transport_checksum() == 0)
    {
        return None;
    }
    let mut key = FlowKey {
        bytes: [0; MAX_HEADER],
        len: l.headers_len(),
    };
    key.bytes[..l.headers_len()].copy_from_slice(frame.headers());
    ip::Frame::new_unchecked(&mut key.bytes[..], l).clear_per_segment_fields();
    Some((key, frame))
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{be16, payload, tcp4_frame, verify_tcp4};
    use super::super::tso::split;
    use super::super::verify::complete_checksum;
    use super::*;
    use crate::core::checksum;
    use std::net::Ipv4Addr;

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
}
