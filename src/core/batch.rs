//! Batch planning of the dataplane: what a worker does with a batch of
//! frames read from the TAP ([`TxBatch::plan`]) and with a batch of
//! datagrams received on a UDP socket ([`RxBatch::decap`]), without I/O.
//!
//! TX: each frame's virtio header is parsed (with offloads on), a partial
//! checksum completed, the [`Router`] decides (encapsulate, answer ARP,
//! drop), a frame too big for the underlay gets an ICMP "fragmentation
//! needed" back, a super-frame is split into segments in an arena, and the
//! result is a list of [`Message`]s — one UDP (GSO) `sendmsg` each, grouped
//! by source socket — and of replies to write to the TAP. Runs of ordinary
//! frames of one flow that share a length leave in one GSO message too.
//!
//! RX: each received run of datagrams (UDP GRO) is cut at its stride, each
//! datagram checked by [`Router::ingress`], its inner checksums checked (and
//! a partial one completed), and the frames coalesced per flow into
//! [`Write`]s for the TAP.
//!
//! Both keep every buffer between batches (sized once for a full batch), so
//! planning allocates nothing per packet; the worker in
//! `crate::dataplane` only reads, sends, writes and counts.

use super::flow::FlowSockets;
use super::offload::{
    self, Checked, Coalescer, F_NEEDS_CSUM, FrameRef, GsoType, Segment, VNET_HDR_LEN, VnetHdr,
    Write,
};
use super::router::{DropReason, Egress, Ingress, Router};
use super::wire::{ethernet, vxlan};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::sync::Arc;

/// Largest frame (or super-frame) read from the TAP — an IP packet of 64 KiB
/// plus its Ethernet header and a VLAN tag — and largest GRO run received.
pub const MAX_FRAME: usize = 65535 + ethernet::HEADER_LEN + 4;
/// Most segments the kernel takes in one UDP GSO send (`UDP_MAX_SEGMENTS`).
pub const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload of one (GSO) send over IPv4.
pub const MAX_UDP_PAYLOAD: usize = 65507;
/// Room in the split arena per frame of a batch: a whole super-frame with
/// 64 segments' headers (or more segments with shorter headers: 122 of an
/// MSS of 536). The arena is sized once for a full batch so that it does not
/// grow while traffic flows; only super-frames of smaller segments can still
/// make it grow, once.
const ARENA_PER_FRAME: usize =
    MAX_FRAME + MAX_GSO_SEGMENTS * (vxlan::HEADER_LEN + offload::MAX_HEADERS);
/// Room for one reply written back into the TAP: an ARP reply (42 bytes), a
/// Neighbor Advertisement (86), an ICMP "fragmentation needed" (at most
/// 110) or an ICMPv6 Packet Too Big (at most 1294).
const REPLY_ROOM: usize = offload::icmp6::MAX_REPLY_LEN;
/// Most datagrams one GRO run holds (`UDP_MAX_SEGMENTS`).
const MAX_GRO_SEGMENTS: usize = 64;

/// What a worker counts during one batch; added to its shared counters once
/// per batch (and, summed over workers, what status and metrics show).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Tally {
    /// Frames encapsulated (segments of a super-frame counted one by one).
    pub encap_frames: u64,
    /// Inner bytes encapsulated.
    pub encap_bytes: u64,
    /// Frames decapsulated.
    pub decap_frames: u64,
    /// Inner bytes decapsulated.
    pub decap_bytes: u64,
    /// ARP requests answered.
    pub arp_replies: u64,
    /// Neighbor Solicitations answered.
    pub ndp_replies: u64,
    /// Super-frames read from the TAP and split.
    pub tso_frames: u64,
    /// Frames (not split from a super-frame) that left with others of their
    /// flow in one UDP GSO message.
    pub gso_datagrams: u64,
    /// Super-frames written to the TAP after coalescing.
    pub gro_frames: u64,
    /// ICMP "fragmentation needed" and ICMPv6 "packet too big" messages sent
    /// back into the TAP.
    pub icmp_too_big: u64,
    /// Decapsulated frames whose inner checksums were not checked again.
    pub checksum_trusted: u64,
    /// Frames and datagrams dropped, by reason (serialised as a map of labels).
    #[serde(serialize_with = "serialize_drops")]
    pub drops: [u64; DropReason::COUNT],
}

fn serialize_drops<S: serde::Serializer>(
    drops: &[u64; DropReason::COUNT],
    s: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(DropReason::COUNT))?;
    for reason in DropReason::ALL {
        map.serialize_entry(reason.as_str(), &drops[reason.index()])?;
    }
    map.end()
}

impl Tally {
    /// Counts one frame or datagram dropped for `reason`.
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason.index()] += 1;
    }

    /// Moves `frames` planned as encapsulated to "dropped: socket error"
    /// (the socket refused the message that carried them).
    pub fn unsent(&mut self, frames: u64) {
        self.drops[DropReason::SocketError.index()] += frames;
        self.encap_frames = self.encap_frames.saturating_sub(frames);
    }
}

/// What TX plans with, fixed for a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxConfig {
    /// Frames start with a virtio-net header (the TAP's offloads are on).
    pub vnet_hdr: bool,
    /// The VXLAN port of every node.
    pub port: u16,
    /// MTU of the underlay: larger datagrams get ICMP back, or are fragmented.
    pub underlay_mtu: u32,
    /// Sending sockets in the pool (≥ 1): handed to flows in turn (see
    /// [`TxBatch::spreading_flows`]), else the flow hash picks one.
    pub sockets: usize,
    /// Seconds on a clock the TX workers share (wrapping): when each flow
    /// last sent, for [`FlowSockets`].
    pub tick: u16,
    /// UDP GSO is in use.
    pub udp_gso: bool,
    /// The underlay is IPv6: each datagram carries a 40-byte outer IP header
    /// instead of 20.
    pub ipv6_underlay: bool,
}

impl TxConfig {
    /// Where each frame starts in its read buffer: with the virtio header at
    /// 0 and the frame after it, or after room for the VXLAN header.
    pub fn frame_offset(&self) -> usize {
        if self.vnet_hdr {
            VNET_HDR_LEN
        } else {
            vxlan::HEADER_LEN
        }
    }

    /// The size of the IP packet on the underlay that carries `frame_len`
    /// bytes of inner frame: outer IP, UDP and VXLAN headers added.
    pub fn outer_len(&self, frame_len: usize) -> usize {
        offload::outer_len(frame_len) + if self.ipv6_underlay { 20 } else { 0 }
    }
}

/// Where a piece of a message's data lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// In read buffer `index` (VXLAN header already written in front).
    Frame {
        /// The read buffer.
        index: usize,
        /// The bytes in it.
        range: Range<usize>,
    },
    /// In the batch's segment arena ([`TxBatch::arena`]).
    Arena(Range<usize>),
}

/// One UDP message to send: one `sendmsg` (of a `sendmmsg`) from one source
/// socket, cut by the kernel into `gso_size` datagrams when set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Index of the sending socket in the pool.
    pub socket: usize,
    /// The peer's VXLAN endpoint.
    pub dst: SocketAddr,
    /// Its data, as indices into [`TxBatch::pieces`].
    pub pieces: Range<usize>,
    /// The UDP GSO segment size, for a message of several datagrams.
    pub gso_size: Option<u16>,
    /// Inner frames it carries (to account for them if the send fails).
    pub frames: u32,
}

/// What TX decided for one frame of the batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    /// Send `frames[index][start..end]` (VXLAN header in place) as one datagram.
    Datagram {
        dst: SocketAddr,
        socket: usize,
        start: usize,
        end: usize,
    },
    /// Send segments `segs[first..last]` (GSO segment length `seg_len`; 0: no GSO).
    Segments {
        dst: SocketAddr,
        socket: usize,
        first: usize,
        last: usize,
        seg_len: usize,
    },
    /// Nothing to send (answered, dropped).
    Skip,
}

/// A TX batch: its plans, its segment arena, replies and messages, kept
/// between batches.
#[derive(Debug)]
pub struct TxBatch {
    plans: Vec<Plan>,
    arena: Vec<u8>,
    segs: Vec<Segment>,
    /// Where the router and the ICMP builder write a reply, before it is
    /// kept in `replies` (only replies are copied: no per-frame clearing).
    scratch: [u8; REPLY_ROOM],
    replies: Vec<u8>,
    reply_ends: Vec<usize>,
    pieces: Vec<Piece>,
    messages: Vec<Message>,
    tally: Tally,
    /// Hands sockets to flows in turn; without it a flow's hash picks.
    flows: Option<Arc<FlowSockets>>,
}

impl TxBatch {
    /// A batch of up to `frames` frames that plans without allocating
    /// (super-frames of unusually small segments may still grow the arena once).
    pub fn with_capacity(frames: usize) -> TxBatch {
        TxBatch {
            plans: Vec::with_capacity(frames),
            arena: Vec::with_capacity(frames * ARENA_PER_FRAME),
            segs: Vec::with_capacity(frames * MAX_GSO_SEGMENTS),
            scratch: [0; REPLY_ROOM],
            replies: Vec::with_capacity(frames * REPLY_ROOM),
            reply_ends: Vec::with_capacity(frames),
            pieces: Vec::with_capacity(frames * MAX_GSO_SEGMENTS),
            messages: Vec::with_capacity(frames * 4),
            tally: Tally::default(),
            flows: None,
        }
    }

    /// Picks each flow's sending socket from `flows` (shared by the TX
    /// workers), which hands them out in turn, instead of by flow hash.
    pub fn spreading_flows(mut self, flows: Arc<FlowSockets>) -> TxBatch {
        self.flows = Some(flows);
        self
    }

    /// Plans the batch: `bufs[i]` holds frame `i` of `lens[i]` bytes at
    /// [`TxConfig::frame_offset`] (after its virtio header with offloads on).
    /// Writes VXLAN headers in front of frames that go out whole, so the
    /// buffers must be writable. Then read [`TxBatch::replies`],
    /// [`TxBatch::messages`] and [`TxBatch::tally`].
    pub fn plan<B: AsMut<[u8]>>(
        &mut self,
        router: &Router,
        config: &TxConfig,
        bufs: &mut [B],
        lens: &[usize],
    ) {
        self.plans.clear();
        self.arena.clear();
        self.segs.clear();
        self.replies.clear();
        self.reply_ends.clear();
        self.pieces.clear();
        self.messages.clear();
        self.tally = Tally::default();
        let header = vxlan::header_bytes(router.local().vni);
        for (buf, &len) in bufs.iter_mut().zip(lens) {
            let plan = self.plan_frame(router, config, &header, buf.as_mut(), len);
            self.plans.push(plan);
        }
        self.group_messages(config);
    }

    /// The replies to write into the TAP, in order (each after an all-zero
    /// virtio header when the TAP has one).
    pub fn replies(&self) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.reply_ends.iter().map(move |&end| {
            let reply = &self.replies[start..end];
            start = end;
            reply
        })
    }

    /// The messages to send, in order; consecutive ones that share a socket
    /// go in one `sendmmsg`.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The pieces messages are made of.
    pub fn pieces(&self) -> &[Piece] {
        &self.pieces
    }

    /// The segment arena split super-frames were written into.
    pub fn arena(&self) -> &[u8] {
        &self.arena
    }

    /// The bytes of a piece: in `bufs` (the buffers given to [`TxBatch::plan`])
    /// or in the arena.
    pub fn piece<'a, B: AsRef<[u8]>>(&'a self, bufs: &'a [B], piece: &Piece) -> &'a [u8] {
        match piece {
            Piece::Frame { index, range } => &bufs[*index].as_ref()[range.clone()],
            Piece::Arena(range) => &self.arena[range.clone()],
        }
    }

    /// The datagrams message `m` puts on the wire, each as its own bytes
    /// (a GSO message cut at its segment size), as the kernel would send
    /// them. Allocates: for tests, fuzzing and the simulation, not the
    /// worker, which hands the pieces to `sendmsg` as they are.
    pub fn datagrams<B: AsRef<[u8]>>(&self, bufs: &[B], m: &Message) -> Vec<Vec<u8>> {
        let bytes: Vec<u8> = self.pieces[m.pieces.clone()]
            .iter()
            .flat_map(|p| self.piece(bufs, p).iter().copied())
            .collect();
        match m.gso_size {
            Some(size) if size > 0 => bytes
                .chunks(usize::from(size))
                .map(<[u8]>::to_vec)
                .collect(),
            _ => vec![bytes],
        }
    }

    /// What the batch counted; the worker adjusts it for sends that fail.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The tally, to adjust for sends that fail.
    pub fn tally_mut(&mut self) -> &mut Tally {
        &mut self.tally
    }

    /// Decides and prepares one frame: its virtio header (with offloads on)
    /// read and a partial checksum completed, the router asked, then the
    /// frame sent whole or split into the arena.
    #[inline]
    fn plan_frame(
        &mut self,
        router: &Router,
        config: &TxConfig,
        header: &[u8; vxlan::HEADER_LEN],
        buf: &mut [u8],
        len: usize,
    ) -> Plan {
        let offset = config.frame_offset();
        let mut super_frame = None;
        if config.vnet_hdr {
            let Some(hdr) = VnetHdr::parse(buf) else {
                self.tally.drop(DropReason::BadOffload);
                return Plan::Skip;
            };
            let frame = &mut buf[offset..offset + len];
            if hdr.gso_type != GsoType::None {
                super_frame = Some(hdr);
            } else if hdr.flags & F_NEEDS_CSUM != 0
                && offload::complete_checksum(
                    frame,
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
                .is_err()
            {
                self.tally.drop(DropReason::BadOffload);
                return Plan::Skip;
            }
        }
        let Some((dst, flow)) = self.egress(router, &buf[offset..offset + len]) else {
            return Plan::Skip;
        };
        let dst = SocketAddr::new(dst, config.port);
        let socket = match &self.flows {
            Some(flows) => flows.socket(flow, config.sockets, config.tick),
            None => flow as usize % config.sockets.max(1),
        };
        match super_frame {
            None => self.plan_whole(config, header, buf, len, dst, socket),
            Some(hdr) => self.plan_split(
                config,
                header,
                &buf[offset..offset + len],
                &hdr,
                dst,
                socket,
            ),
        }
    }

    /// A frame that leaves as it is: the VXLAN header is written right in
    /// front of it (over the tail of a parsed virtio header, or into the room
    /// left for it), unless it is too big for the underlay.
    #[inline]
    fn plan_whole(
        &mut self,
        config: &TxConfig,
        header: &[u8; vxlan::HEADER_LEN],
        buf: &mut [u8],
        len: usize,
        dst: SocketAddr,
        socket: usize,
    ) -> Plan {
        let offset = config.frame_offset();
        let (before, rest) = buf.split_at_mut(offset);
        if self.too_big(config, &rest[..len], len) {
            return Plan::Skip;
        }
        let start = offset - vxlan::HEADER_LEN;
        before[start..].copy_from_slice(header);
        self.tally.encap_frames += 1;
        self.tally.encap_bytes += len as u64;
        Plan::Datagram {
            dst,
            socket,
            start,
            end: offset + len,
        }
    }

    /// A super-frame cut into segments in the arena, unless they are too big
    /// for the underlay.
    #[inline(never)]
    fn plan_split(
        &mut self,
        config: &TxConfig,
        header: &[u8; vxlan::HEADER_LEN],
        frame: &[u8],
        hdr: &VnetHdr,
        dst: SocketAddr,
        socket: usize,
    ) -> Plan {
        let first = self.segs.len();
        let arena_mark = self.arena.len();
        let split = match offload::split(frame, hdr, header, &mut self.arena, &mut self.segs) {
            Ok(split) => split,
            Err(_) => {
                self.segs.truncate(first);
                self.arena.truncate(arena_mark);
                self.tally.drop(DropReason::BadOffload);
                return Plan::Skip;
            }
        };
        let inner_segment = split.segment_len - vxlan::HEADER_LEN;
        if config.outer_len(inner_segment) > config.underlay_mtu as usize {
            self.segs.truncate(first);
            self.arena.truncate(arena_mark);
            if !self.too_big(config, frame, inner_segment) {
                // No ICMP possible (no DF): the super-frame cannot go out.
                self.tally.drop(DropReason::TooBig);
            }
            return Plan::Skip;
        }
        self.tally.tso_frames += 1;
        self.tally.encap_frames += split.count as u64;
        self.tally.encap_bytes += self.segs[first..]
            .iter()
            .map(|s| (s.wire.len() - vxlan::HEADER_LEN) as u64)
            .sum::<u64>();
        Plan::Segments {
            dst,
            socket,
            first,
            last: self.segs.len(),
            seg_len: if config.udp_gso { split.segment_len } else { 0 },
        }
    }

    /// The router's decision for `frame`: where to send it and its flow hash,
    /// or `None` when it was answered (the reply queued) or dropped (counted).
    #[inline]
    fn egress(&mut self, router: &Router, frame: &[u8]) -> Option<(IpAddr, u32)> {
        match router.egress(frame, &mut self.scratch) {
            Egress::Encap { dst, flow } => Some((dst, flow)),
            Egress::ArpReply { len } => {
                self.keep_reply(len);
                self.tally.arp_replies += 1;
                None
            }
            Egress::NdpReply { len } => {
                self.keep_reply(len);
                self.tally.ndp_replies += 1;
                None
            }
            Egress::Drop(reason) => {
                self.tally.drop(reason);
                None
            }
        }
    }

    /// Handles a frame whose datagram would exceed the underlay MTU: IPv4 with DF
    /// gets an ICMP "fragmentation needed" back through the TAP, IPv6 (bigger
    /// than 1280 bytes) an ICMPv6 "packet too big", and is dropped; anything
    /// else goes out and the kernel fragments the outer packet, as flannel's
    /// kernel device (no DF) would. Returns true when dropped.
    fn too_big(&mut self, config: &TxConfig, frame: &[u8], inner_len: usize) -> bool {
        let mtu = config.underlay_mtu as usize;
        if config.outer_len(inner_len) <= mtu {
            return false;
        }
        let overlay_mtu = mtu.saturating_sub(config.outer_len(ethernet::HEADER_LEN));
        let ipv6 = frame.get(12..14) == Some(&[0x86, 0xdd][..]);
        let reply = if ipv6 {
            offload::icmp6_packet_too_big(frame, overlay_mtu as u32, &mut self.scratch)
        } else {
            offload::icmp_frag_needed(frame, overlay_mtu as u16, &mut self.scratch)
        };
        match reply {
            Some(len) => {
                self.keep_reply(len);
                self.tally.icmp_too_big += 1;
                self.tally.drop(DropReason::TooBig);
                true
            }
            None => false,
        }
    }

    /// Keeps the reply of `len` bytes in the scratch buffer for the TAP.
    fn keep_reply(&mut self, len: usize) {
        self.replies.extend_from_slice(&self.scratch[..len]);
        self.reply_ends.push(self.replies.len());
    }

    /// Turns the plans into messages: a super-frame's segments in GSO
    /// messages of up to 64 segments and 64 KiB (one per segment without
    /// GSO), and a datagram together with the ones that follow it and can
    /// leave with it in one GSO message ([`TxBatch::gso_run`]).
    fn group_messages(&mut self, config: &TxConfig) {
        let mut i = 0;
        while i < self.plans.len() {
            match self.plans[i] {
                Plan::Skip => {}
                Plan::Datagram {
                    dst,
                    socket,
                    start,
                    end,
                } => {
                    let first_piece = self.pieces.len();
                    self.pieces.push(Piece::Frame {
                        index: i,
                        range: start..end,
                    });
                    if config.udp_gso {
                        i = self.gso_run(i, config);
                    }
                    let count = self.pieces.len() - first_piece;
                    if count > 1 {
                        self.tally.gso_datagrams += count as u64;
                    }
                    self.messages.push(Message {
                        socket,
                        dst,
                        pieces: first_piece..self.pieces.len(),
                        gso_size: (count > 1).then_some((end - start) as u16),
                        frames: count as u32,
                    });
                }
                Plan::Segments {
                    dst,
                    socket,
                    first,
                    last,
                    seg_len,
                } => {
                    // Without GSO (seg_len 0) every segment is its own datagram.
                    let per_message = MAX_UDP_PAYLOAD
                        .checked_div(seg_len)
                        .map_or(1, |n| n.clamp(1, MAX_GSO_SEGMENTS));
                    let mut s = first;
                    while s < last {
                        let e = (s + per_message).min(last);
                        // The segments lie back to back in the arena: one piece.
                        let piece = self.pieces.len();
                        self.pieces.push(Piece::Arena(
                            self.segs[s].wire.start..self.segs[e - 1].wire.end,
                        ));
                        self.messages.push(Message {
                            socket,
                            dst,
                            pieces: piece..piece + 1,
                            gso_size: (e - s > 1 && seg_len > 0).then_some(seg_len as u16),
                            frames: (e - s) as u32,
                        });
                        s = e;
                    }
                }
            }
            i += 1;
        }
    }

    /// Gathers the datagrams that follow plan `i` (a datagram, its piece
    /// already pushed) and can leave with it in one UDP GSO message: same
    /// destination and source socket, the same length (the last may be
    /// shorter), at most 64 of them and 64 KiB, each within the underlay
    /// MTU. Small packets of one flow (DNS, QUIC, VoIP, TCP ACKs) then cross
    /// the underlay stack as one buffer, which the receiver's UDP_GRO keeps
    /// whole; on the wire they are the same datagrams. Pushes their pieces
    /// and returns the index of the last plan taken.
    fn gso_run(&mut self, i: usize, config: &TxConfig) -> usize {
        let Plan::Datagram {
            dst,
            socket,
            start,
            end,
        } = self.plans[i]
        else {
            return i;
        };
        let size = end - start;
        if config.outer_len(size - vxlan::HEADER_LEN) > config.underlay_mtu as usize {
            return i;
        }
        let (mut last, mut total, mut count) = (i, size, 1);
        for (j, plan) in self.plans.iter().enumerate().skip(i + 1) {
            match *plan {
                Plan::Skip => continue,
                Plan::Datagram {
                    dst: d,
                    socket: s,
                    start,
                    end,
                } if d == dst && s == socket && end - start <= size => {
                    if count == MAX_GSO_SEGMENTS || total + (end - start) > MAX_UDP_PAYLOAD {
                        break;
                    }
                    self.pieces.push(Piece::Frame {
                        index: j,
                        range: start..end,
                    });
                    count += 1;
                    total += end - start;
                    last = j;
                    if end - start < size {
                        break; // only the last segment of a GSO send may be short
                    }
                }
                _ => break,
            }
        }
        last
    }
}

/// One receive slot's worth: a datagram, or with UDP GRO a run of datagrams
/// of `stride` bytes each (the last may be shorter).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// The sender's address (`None`: unknown family).
    pub src: Option<IpAddr>,
    /// Bytes received into the slot.
    pub len: usize,
    /// The size of each datagram of a GRO run but the last (`len` when not a run).
    pub stride: usize,
    /// The message was cut to the slot's size.
    pub truncated: bool,
    /// Control data was cut off: the stride may be missing, so the run
    /// cannot be cut safely.
    pub control_truncated: bool,
}

/// What RX decides with, fixed for a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxConfig {
    /// The TAP takes frames with a virtio header: coalesce into super-frames.
    pub vnet_hdr: bool,
    /// The TAP took USO: coalesce runs of UDP datagrams too.
    pub uso: bool,
    /// Verify every frame's inner IP and TCP/UDP checksums.
    pub verify_checksums: bool,
    /// This socket receives only datagrams whose nonzero outer UDP checksum
    /// the kernel verified: counted as `checksum_trusted`.
    pub outer_checksum_covered: bool,
}

/// An RX batch: the coalescer and the writes, kept between batches.
#[derive(Debug)]
pub struct RxBatch {
    config: RxConfig,
    coalescer: Coalescer,
    /// Without a virtio header: every frame alone, in order.
    singles: Vec<Write>,
    tally: Tally,
}

impl RxBatch {
    /// A batch of up to `slots` receive slots (`gro`: each may hold a run of
    /// up to 64 datagrams) that decapsulates without allocating.
    pub fn new(config: RxConfig, slots: usize, gro: bool) -> RxBatch {
        let frames = if gro { slots * MAX_GRO_SEGMENTS } else { slots };
        let mut coalescer = Coalescer::with_capacity(if config.vnet_hdr { frames } else { 0 });
        coalescer.set_udp(config.uso);
        RxBatch {
            config,
            coalescer,
            singles: Vec::with_capacity(if config.vnet_hdr { 0 } else { frames }),
            tally: Tally::default(),
        }
    }

    /// Decapsulates the batch: `bufs[k]` holds what `received[k]` describes.
    /// Completes partial inner checksums in place. Then write
    /// [`RxBatch::writes`] to the TAP in order and add [`RxBatch::tally`].
    pub fn decap<B: AsMut<[u8]>, M: Copy + Into<Received>>(
        &mut self,
        router: &Router,
        bufs: &mut [B],
        received: &[M],
    ) {
        self.tally = Tally::default();
        self.coalescer.clear();
        self.singles.clear();
        let verify = self.config.verify_checksums;
        let mut passed = None;
        for (k, (buf, m)) in bufs.iter_mut().zip(received).enumerate() {
            let m: Received = (*m).into();
            let buf = buf.as_mut();
            let Some(src) = m.src else {
                self.tally.drop(DropReason::UnknownVtep);
                continue;
            };
            if m.truncated {
                self.tally.drop(DropReason::TooBig);
                continue;
            }
            if m.control_truncated {
                // The GRO segment size may be missing: cutting the run would
                // glue datagrams together. Drop it (and count it).
                self.tally.drop(DropReason::SocketError);
                continue;
            }
            // An empty datagram is still a datagram (and too short).
            if m.len == 0 {
                self.tally.drop(DropReason::TooShort);
            }
            let len = m.len.min(buf.len());
            let stride = m.stride.max(1);
            let mut off = 0;
            while off < len {
                let end = (off + stride).min(len);
                let datagram = &mut buf[off..end];
                match router.ingress_remembering(src, datagram, &mut passed) {
                    Ingress::Deliver => {
                        let frame = &mut datagram[vxlan::HEADER_LEN..];
                        if offload::check_checksums(frame, verify) == Checked::Invalid {
                            self.tally.drop(DropReason::BadChecksum);
                            off = end;
                            continue;
                        }
                        let frame = &*frame;
                        self.tally.checksum_trusted +=
                            u64::from(self.config.outer_checksum_covered);
                        self.tally.decap_frames += 1;
                        self.tally.decap_bytes += frame.len() as u64;
                        let at = FrameRef {
                            slot: k as u32,
                            start: (off + vxlan::HEADER_LEN) as u32,
                            end: end as u32,
                        };
                        if self.config.vnet_hdr {
                            self.coalescer.push(frame, at);
                        } else {
                            self.singles.push(Write::Single(at));
                        }
                    }
                    Ingress::Drop(reason) => self.tally.drop(reason),
                }
                off = end;
            }
        }
        if self.config.vnet_hdr {
            self.coalescer.finish();
            self.tally.gro_frames += self
                .coalescer
                .writes()
                .iter()
                .filter(|w| matches!(w, Write::Merged { .. }))
                .count() as u64;
        }
    }

    /// The TAP writes of the batch, in order: a [`Write::Single`] after an
    /// all-zero virtio header when the TAP has one, a [`Write::Merged`] as
    /// its header then its parts.
    pub fn writes(&self) -> &[Write] {
        if self.config.vnet_hdr {
            self.coalescer.writes()
        } else {
            &self.singles
        }
    }

    /// The virtio header and headers of a merged write.
    pub fn header(&self, index: usize) -> &[u8] {
        self.coalescer.header(index)
    }

    /// The payload pieces of a merged write.
    pub fn parts(&self, parts: &Range<usize>) -> &[FrameRef] {
        self.coalescer.parts(parts)
    }

    /// What the batch counted; the worker adds TAP write failures.
    pub fn tally_mut(&mut self) -> &mut Tally {
        &mut self.tally
    }

    /// What the batch counted.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::fixtures::{
        OUR_MAC, PEER_IP, PEER_MAC, arp_request, tcp4_frame, tso_superframe, tso_vnet_hdr,
        two_node_router, udp4_frame, with_partial_checksum,
    };
    use crate::core::offload::test_support::payload;
    use crate::core::router::SourceCheck;
    use crate::core::wire::vxlan::Vni;

    const PORT: u16 = 4789;

    fn router() -> Router {
        two_node_router(SourceCheck::Strict)
    }

    fn tx_config(vnet_hdr: bool, udp_gso: bool) -> TxConfig {
        TxConfig {
            vnet_hdr,
            port: PORT,
            underlay_mtu: 1500,
            sockets: 4,
            tick: 0,
            udp_gso,
            ipv6_underlay: false,
        }
    }

    /// Read buffers as the TX task fills them: each frame after its virtio
    /// header (`Some`) or after room for the VXLAN header.
    fn read(frames: &[(Option<VnetHdr>, Vec<u8>)]) -> (Vec<Vec<u8>>, Vec<usize>) {
        frames
            .iter()
            .map(|(hdr, frame)| {
                let mut buf = match hdr {
                    Some(h) => h.emit().to_vec(),
                    None => vec![0; vxlan::HEADER_LEN],
                };
                buf.extend_from_slice(frame);
                (buf, frame.len())
            })
            .unzip()
    }

    fn plain(frame: Vec<u8>) -> (Option<VnetHdr>, Vec<u8>) {
        (None, frame)
    }

    fn offloaded(frame: Vec<u8>) -> (Option<VnetHdr>, Vec<u8>) {
        (Some(VnetHdr::NONE), frame)
    }

    #[test]
    fn a_frame_to_a_peer_leaves_behind_a_vxlan_header() {
        let frame = tcp4_frame(&payload(100), 1, 0x18, 1);
        for hdr in [None, Some(VnetHdr::NONE)] {
            let (mut bufs, lens) = read(&[(hdr, frame.clone())]);
            let mut batch = TxBatch::with_capacity(4);
            let config = tx_config(hdr.is_some(), true);
            batch.plan(&router(), &config, &mut bufs, &lens);
            let [m] = batch.messages() else {
                panic!("{:?}", batch.messages())
            };
            assert_eq!(m.dst, SocketAddr::new(PEER_IP.into(), PORT));
            assert_eq!(m.socket, crate::core::flow::hash(&frame) as usize % 4);
            assert_eq!((m.gso_size, m.frames), (None, 1));
            let mut want = vxlan::header_bytes(Vni::new(1).unwrap()).to_vec();
            want.extend_from_slice(&frame);
            assert_eq!(batch.datagrams(&bufs, m), [want]);
            assert_eq!(batch.replies().count(), 0);
            let t = batch.tally();
            assert_eq!((t.encap_frames, t.encap_bytes), (1, frame.len() as u64));
        }
    }

    #[test]
    fn spreading_hands_each_new_flow_the_next_socket_and_keeps_it() {
        let flows = Arc::new(FlowSockets::new(64));
        let frame = |port: u16| {
            let mut f = tcp4_frame(&payload(100), 1, 0x18, 1);
            f[34..36].copy_from_slice(&port.to_be_bytes());
            plain(f)
        };
        let ports = [1000u16, 1002, 1004, 1006];
        let config = tx_config(false, true);
        let mut batch = TxBatch::with_capacity(8).spreading_flows(flows.clone());
        let mut socket_of = std::collections::HashMap::new();
        for round in 0..2 {
            // Two frames of each flow, interleaved; the second round in
            // another order, later.
            let order: Vec<u16> = match round {
                0 => ports.iter().chain(&ports).copied().collect(),
                _ => ports.iter().rev().chain(&ports).copied().collect(),
            };
            let (mut bufs, lens) = read(&order.iter().map(|p| frame(*p)).collect::<Vec<_>>());
            let config = TxConfig {
                tick: round,
                ..config
            };
            batch.plan(&router(), &config, &mut bufs, &lens);
            for m in batch.messages() {
                for d in batch.datagrams(&bufs, m) {
                    let port = u16::from_be_bytes([d[8 + 34], d[8 + 35]]);
                    let first = *socket_of.entry(port).or_insert(m.socket);
                    assert_eq!(m.socket, first, "flow {port} moved to another socket");
                }
            }
        }
        let sockets: Vec<usize> = ports.iter().map(|p| socket_of[p]).collect();
        assert_eq!(sockets, [0, 1, 2, 3], "in the order the flows came");
    }

    #[test]
    fn arp_is_answered_and_the_rest_dropped_by_reason() {
        let arp = arp_request(OUR_MAC.0, [10, 244, 1, 0], [10, 244, 2, 0]);
        let unknown = udp4_frame([0x0e, 9, 9, 9, 9, 9], OUR_MAC.0, 100);
        let group = udp4_frame([0x33, 0x33, 0, 0, 0, 1], OUR_MAC.0, 100);
        let (mut bufs, lens) =
            read(&[plain(arp), plain(unknown), plain(group), plain(vec![0; 10])]);
        let mut batch = TxBatch::with_capacity(4);
        batch.plan(&router(), &tx_config(false, true), &mut bufs, &lens);
        assert!(batch.messages().is_empty());
        let replies: Vec<&[u8]> = batch.replies().collect();
        assert_eq!(replies.len(), 1);
        assert_eq!(
            &replies[0][6..12],
            &PEER_MAC.0,
            "answered with the peer's VtepMAC"
        );
        let t = batch.tally();
        assert_eq!(t.arp_replies, 1);
        for reason in [
            DropReason::NoFdbEntry,
            DropReason::GroupDestination,
            DropReason::TooShort,
        ] {
            assert_eq!(t.drops[reason.index()], 1, "{reason:?}");
        }
    }

    #[test]
    fn too_big_for_the_underlay_gets_icmp_when_df_else_goes_out() {
        let big = tcp4_frame(&payload(1600), 1, 0x10, 1);
        let mut no_df = big.clone();
        no_df[20] = 0;
        let (mut bufs, lens) = read(&[plain(big), plain(no_df)]);
        let mut batch = TxBatch::with_capacity(2);
        batch.plan(&router(), &tx_config(false, true), &mut bufs, &lens);
        let replies: Vec<&[u8]> = batch.replies().collect();
        assert_eq!(replies.len(), 1);
        assert_eq!(
            (replies[0][34], replies[0][35]),
            (3, 4),
            "fragmentation needed"
        );
        assert_eq!(u16::from_be_bytes([replies[0][40], replies[0][41]]), 1450);
        let t = batch.tally();
        assert_eq!(
            (t.icmp_too_big, t.drops[DropReason::TooBig.index()]),
            (1, 1)
        );
        assert_eq!(batch.messages().len(), 1, "no DF: the kernel fragments it");
        assert_eq!(t.encap_frames, 1);
    }

    #[test]
    fn a_super_frame_leaves_in_gso_messages_of_at_most_64_kib() {
        let frame = tso_superframe(&payload(64000));
        let hdr = tso_vnet_hdr(1398);
        let (mut bufs, lens) = read(&[(Some(hdr), frame)]);
        let mut batch = TxBatch::with_capacity(1);
        batch.plan(&router(), &tx_config(true, true), &mut bufs, &lens);
        let segment = vxlan::HEADER_LEN + 66 + 1398;
        let sizes: Vec<(Option<u16>, u32)> = batch
            .messages()
            .iter()
            .map(|m| (m.gso_size, m.frames))
            .collect();
        assert_eq!(
            sizes,
            [(Some(segment as u16), 44), (Some(segment as u16), 2)]
        );
        let t = batch.tally();
        assert_eq!((t.tso_frames, t.encap_frames), (1, 46));
        let mut payload_out = Vec::new();
        for m in batch.messages() {
            for d in batch.datagrams(&bufs, m) {
                assert_eq!(d[..8], vxlan::header_bytes(Vni::new(1).unwrap()));
                payload_out.extend_from_slice(&d[8 + 66..]);
            }
        }
        assert_eq!(payload_out, payload(64000));
        // Without UDP GSO: one datagram per segment.
        batch.plan(&router(), &tx_config(true, false), &mut bufs, &lens);
        assert_eq!(batch.messages().len(), 46);
        assert!(batch.messages().iter().all(|m| m.gso_size.is_none()));
    }

    #[test]
    fn offloaded_frames_get_their_checksum_completed_or_are_refused() {
        let good = tcp4_frame(&payload(300), 5, 0x18, 1);
        let partial = with_partial_checksum(&good);
        let needs_csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 34,
            csum_offset: 16,
            ..VnetHdr::NONE
        };
        let bad_csum = VnetHdr {
            csum_start: 4000,
            ..needs_csum
        };
        let bad_split = tso_vnet_hdr(0);
        let (mut bufs, lens) = read(&[
            (Some(needs_csum), partial),
            (Some(bad_csum), good.clone()),
            (Some(bad_split), good.clone()),
        ]);
        let mut batch = TxBatch::with_capacity(3);
        batch.plan(&router(), &tx_config(true, true), &mut bufs, &lens);
        let [m] = batch.messages() else {
            panic!("{:?}", batch.messages())
        };
        assert_eq!(&batch.datagrams(&bufs, m)[0][8..], &good[..]);
        assert_eq!(batch.tally().drops[DropReason::BadOffload.index()], 2);
        // A buffer too short for a virtio header.
        let mut short = vec![vec![0u8; 4]];
        batch.plan(&router(), &tx_config(true, true), &mut short, &[0]);
        assert_eq!(batch.tally().drops[DropReason::BadOffload.index()], 1);
    }

    #[test]
    fn equal_datagrams_of_a_flow_share_one_gso_message() {
        let d = |n: usize| udp4_frame(PEER_MAC.0, OUR_MAC.0, n);
        let frames = [d(200), d(200), d(150), d(200), d(200)];
        let (mut bufs, lens) = read(&frames.clone().map(offloaded));
        let mut batch = TxBatch::with_capacity(5);
        batch.plan(&router(), &tx_config(true, true), &mut bufs, &lens);
        let runs: Vec<(usize, Option<u16>)> = batch
            .messages()
            .iter()
            .map(|m| (m.pieces.len(), m.gso_size))
            .collect();
        // A shorter datagram ends a run (only the last of a GSO send may be short).
        assert_eq!(runs, [(3, Some(208)), (2, Some(208))]);
        assert_eq!(batch.tally().gso_datagrams, 5);
        let sent: Vec<Vec<u8>> = batch
            .messages()
            .iter()
            .flat_map(|m| batch.datagrams(&bufs, m))
            .map(|d| d[8..].to_vec())
            .collect();
        assert_eq!(sent, frames);
        // Without UDP GSO every datagram goes alone.
        batch.plan(&router(), &tx_config(true, false), &mut bufs, &lens);
        assert_eq!(batch.messages().len(), 5);
        assert_eq!(batch.tally().gso_datagrams, 0);
    }

    #[test]
    fn unsent_frames_move_from_encapsulated_to_socket_errors() {
        let mut t = Tally {
            encap_frames: 5,
            ..Tally::default()
        };
        t.unsent(3);
        assert_eq!(t.encap_frames, 2);
        assert_eq!(t.drops[DropReason::SocketError.index()], 3);
        t.unsent(9);
        assert_eq!(t.encap_frames, 0);
    }

    fn rx_config(vnet_hdr: bool) -> RxConfig {
        RxConfig {
            vnet_hdr,
            uso: false,
            verify_checksums: true,
            outer_checksum_covered: false,
        }
    }

    /// `frame` as `PEER` sends it to us: MACs swapped, behind a VXLAN header.
    fn from_peer(mut frame: Vec<u8>) -> Vec<u8> {
        frame[..6].copy_from_slice(&OUR_MAC.0);
        frame[6..12].copy_from_slice(&PEER_MAC.0);
        let mut d = vxlan::header_bytes(Vni::new(1).unwrap()).to_vec();
        d.extend_from_slice(&frame);
        d
    }

    fn received(buf: &[u8], stride: usize) -> Received {
        Received {
            src: Some(PEER_IP.into()),
            len: buf.len(),
            stride,
            truncated: false,
            control_truncated: false,
        }
    }

    #[test]
    fn a_gro_run_is_cut_checked_and_coalesced() {
        let segs: Vec<Vec<u8>> = (0..3u32)
            .map(|i| from_peer(tcp4_frame(&payload(1000), 1 + i * 1000, 0x10, i as u16)))
            .collect();
        let stride = segs[0].len();
        let run: Vec<u8> = segs.concat();
        let meta = [received(&run, stride)];
        let mut bufs = vec![run.clone()];
        let mut batch = RxBatch::new(rx_config(true), 1, true);
        batch.decap(&router(), &mut bufs, &meta);
        let [Write::Merged { header, parts }] = batch.writes() else {
            panic!("{:?}", batch.writes())
        };
        assert_eq!(batch.parts(parts).len(), 3);
        let hdr = VnetHdr::parse(batch.header(*header)).unwrap();
        assert_eq!((hdr.gso_type, hdr.gso_size), (GsoType::TcpV4, 1000));
        let t = batch.tally();
        assert_eq!((t.decap_frames, t.gro_frames), (3, 1));
        assert_eq!(t.decap_bytes, 3 * (stride - vxlan::HEADER_LEN) as u64);
        // Without a virtio header each frame goes alone, in order.
        let mut batch = RxBatch::new(rx_config(false), 1, true);
        batch.decap(&router(), &mut bufs, &meta);
        let frames: Vec<Vec<u8>> = batch
            .writes()
            .iter()
            .map(|w| match w {
                Write::Single(r) => bufs[r.slot as usize][r.range()].to_vec(),
                other => panic!("{other:?}"),
            })
            .collect();
        let want: Vec<Vec<u8>> = segs.iter().map(|d| d[8..].to_vec()).collect();
        assert_eq!(frames, want);
        assert_eq!(batch.tally().gro_frames, 0);
    }

    #[test]
    fn what_cannot_be_delivered_is_counted_by_reason() {
        let good = from_peer(tcp4_frame(&payload(100), 1, 0x10, 1));
        let mut damaged = good.clone();
        damaged[100] ^= 0xff;
        let unknown_vni = {
            let mut d = good.clone();
            d[6] = 9;
            d
        };
        let slots = [
            good.clone(),
            damaged,
            unknown_vni,
            good.clone(),
            good.clone(),
            Vec::new(),
        ];
        let mut meta: Vec<Received> = slots.iter().map(|b| received(b, b.len())).collect();
        meta[3].src = None;
        meta[4].truncated = true;
        meta[5].len = 0;
        let mut bufs = slots.to_vec();
        let mut batch = RxBatch::new(rx_config(true), 6, false);
        batch.decap(&router(), &mut bufs, &meta);
        assert_eq!(
            batch.writes(),
            [Write::Single(FrameRef {
                slot: 0,
                start: 8,
                end: good.len() as u32
            })]
        );
        let t = batch.tally();
        for reason in [
            DropReason::BadChecksum,
            DropReason::WrongVni,
            DropReason::UnknownVtep,
            DropReason::TooBig,
            DropReason::TooShort,
        ] {
            assert_eq!(t.drops[reason.index()], 1, "{reason:?}");
        }
        let mut cut = vec![good.clone()];
        let mut m = [received(&good, good.len())];
        m[0].control_truncated = true;
        batch.decap(&router(), &mut cut, &m);
        assert_eq!(batch.tally().drops[DropReason::SocketError.index()], 1);
        assert!(batch.writes().is_empty());
    }

    #[test]
    fn covered_datagrams_skip_the_check_and_partial_checksums_are_completed() {
        let inner = tcp4_frame(&payload(300), 5, 0x18, 1);
        let partial = with_partial_checksum(&inner);
        let mut damaged = inner.clone();
        damaged[100] ^= 0xff;
        let slots = [from_peer(partial), from_peer(damaged)];
        let meta: Vec<Received> = slots.iter().map(|b| received(b, b.len())).collect();
        let mut bufs = slots.to_vec();
        let covered = RxConfig {
            verify_checksums: false,
            outer_checksum_covered: true,
            ..rx_config(false)
        };
        let mut batch = RxBatch::new(covered, 2, false);
        batch.decap(&router(), &mut bufs, &meta);
        assert_eq!(
            batch.writes().len(),
            2,
            "not verified: the damage is the outer checksum's to catch"
        );
        assert_eq!(batch.tally().checksum_trusted, 2);
        assert_eq!(
            bufs[0][8 + 50..8 + 52],
            from_peer(inner)[8 + 50..8 + 52],
            "completed"
        );
    }
}
