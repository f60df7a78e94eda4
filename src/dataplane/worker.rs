//! The hot path: one TX task (TAP → UDP) and one RX task (UDP → TAP) per worker.
//!
//! TX reads a batch of frames from the TAP. With the virtio-net header on,
//! a frame may be a TCP/UDP super-frame: it is split into MSS-sized segments
//! whose headers go into a reused arena while payloads stay in the read
//! buffer, and all segments to one peer leave in one UDP GSO `sendmsg` (one
//! `sendmmsg` per batch and source socket); so do runs of ordinary frames of
//! one flow that share a length, back to back in the batch. RX receives a
//! batch of (GRO-coalesced) datagrams, checks each against the router,
//! re-coalesces consecutive TCP segments (and, with USO, UDP datagrams) of a
//! flow and writes each super-frame to the TAP with one `writev` and a GSO
//! virtio header. Buffers, arenas and header
//! arrays are allocated once per worker: nothing is allocated per packet.
//!
//! Error policy:
//! - `WouldBlock` waits for readiness; `Interrupted` retries.
//! - A datagram the socket refuses (unreachable, too big, filtered) is dropped
//!   and counted as `socket_error`; the batch goes on. `EIO` on a GSO send
//!   means the egress device cannot checksum: GSO is turned off for good
//!   (logged, visible in status) and the batch is dropped and counted.
//! - A frame the TAP refuses is dropped and counted as `tap_error`.
//! - Any other TAP read error means the device is gone, and a failing
//!   readiness wait means the runtime is shutting down: the worker reports it
//!   as fatal and stops; the agent exits non-zero so its supervisor restarts it.

use super::counters::BatchTally;
use super::sys::{self, RecvBatch, RecvMeta, SendBatch, SendQueue};
use super::udp::{Listener, SourceSocket};
use super::{DataplaneError, Shared};
use crate::core::offload::{
    self, Checked, Coalescer, F_NEEDS_CSUM, FrameRef, GsoType, Segment, VNET_HDR_LEN, VnetHdr,
    Write as GroWrite,
};
use crate::core::router::{DropReason, Egress, Ingress};
use crate::core::wire::vxlan;
use socket2::Socket;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

/// Largest frame (or super-frame) read from the TAP — an IP packet of 64 KiB
/// plus its Ethernet header and a VLAN tag — and largest GRO run received.
const MAX_FRAME: usize = 65535 + 14 + 4;
/// Bytes in front of a TAP read: room for the VXLAN header in plain mode.
const PLAIN_HEAD: usize = vxlan::HEADER_LEN;
/// Most segments the kernel takes in one UDP GSO send (`UDP_MAX_SEGMENTS`).
pub(super) const MAX_GSO_SEGMENTS: usize = 64;
/// Largest UDP payload of one (GSO) send over IPv4.
pub(super) const MAX_UDP_PAYLOAD: usize = 65507;
/// Room in the split arena per frame of a batch: a whole super-frame with
/// 64 segments' headers (or more segments with shorter headers: 122 of an
/// MSS of 536). The arena is sized once for a full batch so that it does not
/// grow while traffic flows; only super-frames of smaller segments can still
/// make it grow, once (counted as an allocation).
const ARENA_PER_FRAME: usize =
    MAX_FRAME + MAX_GSO_SEGMENTS * (vxlan::HEADER_LEN + offload::MAX_HEADERS);
/// Most pieces in one coalesced TAP write: the header and the payload parts.
const MAX_WRITE_PIECES: usize = offload::MAX_MERGED_PARTS + 1;
/// An all-zero virtio header: "no offload, checksum verified by the kernel".
const ZERO_VNET: [u8; VNET_HDR_LEN] = [0; VNET_HDR_LEN];

pub(super) struct WorkerSetup {
    pub index: usize,
    pub tap_name: String,
    pub queue: OwnedFd,
    pub rx: Listener,
    pub pool: Vec<SourceSocket>,
    pub shared: Arc<Shared>,
    pub batch: usize,
    pub fatal: mpsc::UnboundedSender<DataplaneError>,
}

/// Reports a worker thread that unwinds as fatal, so the agent exits (and its
/// supervisor restarts it) instead of running on with a dead queue.
struct PanicReport {
    fatal: mpsc::UnboundedSender<DataplaneError>,
    index: usize,
}

impl Drop for PanicReport {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let _ = self
                .fatal
                .send(DataplaneError::WorkerPanicked { index: self.index });
        }
    }
}

/// A running worker: its OS threads and the way to stop them.
#[derive(Debug)]
pub(super) struct WorkerHandle {
    threads: Vec<(
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    )>,
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        for (stop, thread) in self.threads.drain(..) {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

/// Starts a worker on its own OS thread (or two: one per direction when
/// `split` is on), each running a single-threaded tokio runtime: the reactor
/// that sees a descriptor become ready runs the task that reads it, on the
/// same thread, with no hand-off between threads.
pub(super) fn spawn(setup: WorkerSetup, split: bool) -> Result<WorkerHandle, DataplaneError> {
    let WorkerSetup {
        index,
        tap_name,
        queue,
        rx,
        pool,
        shared,
        batch,
        fatal,
    } = setup;
    let tap_failed = |source| DataplaneError::TapFailed {
        name: tap_name.clone(),
        source,
    };
    let tap = File::from(queue);
    // The RX tasks only write to the queue, each through its own descriptor.
    let verify_writer = tap.try_clone().map_err(tap_failed)?;
    let covered_writer = match rx.covered {
        Some(_) => Some(tap.try_clone().map_err(tap_failed)?),
        None => None,
    };
    let tx_parts = (tap, pool, tap_name.clone(), shared.clone());
    // Each thread loads the router once at start: arc-swap gives a thread a
    // debt node on its first load, which must not be an allocation on the
    // packet path when the first frame arrives, possibly long after start.
    let build_tx = move || -> Result<TxTask, DataplaneError> {
        let (tap, pool, tap_name, shared) = tx_parts;
        drop(shared.router.load());
        let tap = sys::register(tap).map_err(|source| DataplaneError::TapFailed {
            name: tap_name.clone(),
            source,
        })?;
        let pool = pool
            .into_iter()
            .map(|s| sys::register(s.socket))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|source| DataplaneError::SocketFailed { source })?;
        Ok(TxTask {
            index,
            tap_name,
            tap,
            pool,
            shared,
            batch,
        })
    };
    let build_rx = move || -> Result<RxTasks, DataplaneError> {
        drop(shared.router.load());
        let register = |socket| {
            sys::register(socket).map_err(|source| DataplaneError::SocketFailed { source })
        };
        let task = |socket, tap, covered| -> Result<RxTask, DataplaneError> {
            Ok(RxTask {
                index,
                tap,
                socket: register(socket)?,
                covered,
                shared: shared.clone(),
                batch,
            })
        };
        let verify = task(rx.verify, verify_writer, false)?;
        let covered = match rx.covered.zip(covered_writer) {
            Some((socket, tap)) => Some(task(socket, tap, true)?),
            None => None,
        };
        Ok(RxTasks { verify, covered })
    };
    let mut handle = WorkerHandle {
        threads: Vec::new(),
    };
    if split {
        handle.threads.push(start_thread(
            format!("weft-dp-{index}"),
            index,
            fatal.clone(),
            move || build_tx().map(|tx| tx.run()),
        )?);
        handle.threads.push(start_thread(
            format!("weft-rx-{index}"),
            index,
            fatal,
            move || build_rx().map(|rx| rx.run()),
        )?);
    } else {
        handle.threads.push(start_thread(
            format!("weft-dp-{index}"),
            index,
            fatal,
            move || {
                let (tx, rx) = (build_tx()?, build_rx()?);
                Ok(async move {
                    tokio::select! {
                        r = tx.run() => r,
                        r = rx.run() => r,
                    }
                })
            },
        )?);
    }
    Ok(handle)
}

/// Starts one dataplane thread: `build` runs inside the thread's runtime (so
/// that descriptors register with it) and returns the future the thread runs
/// until it fails or is stopped.
fn start_thread<B, F>(
    name: String,
    index: usize,
    fatal: mpsc::UnboundedSender<DataplaneError>,
    build: B,
) -> Result<
    (
        tokio::sync::oneshot::Sender<()>,
        std::thread::JoinHandle<()>,
    ),
    DataplaneError,
>
where
    B: FnOnce() -> Result<F, DataplaneError> + Send + 'static,
    F: std::future::Future<Output = Result<(), DataplaneError>>,
{
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            sys::mark_dataplane_thread();
            let _report = PanicReport {
                fatal: fatal.clone(),
                index,
            };
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .enable_time()
                .build()
            {
                Ok(rt) => rt,
                Err(source) => {
                    let _ = ready_tx.send(Err(DataplaneError::SocketFailed { source }));
                    return;
                }
            };
            runtime.block_on(async move {
                let work = match build() {
                    Ok(work) => {
                        let _ = ready_tx.send(Ok(()));
                        work
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let result = tokio::select! {
                    r = work => r,
                    _ = stop_rx => Ok(()),
                };
                if let Err(e) = result {
                    let _ = fatal.send(e);
                }
            });
        })
        .map_err(|source| DataplaneError::SocketFailed { source })?;
    match ready_rx.recv() {
        Ok(Ok(())) => Ok((stop_tx, thread)),
        Ok(Err(e)) => {
            let _ = thread.join();
            Err(e)
        }
        Err(_) => Err(DataplaneError::SocketFailed {
            source: io::Error::other("dataplane worker thread died at start"),
        }),
    }
}

/// Writes one frame to the TAP: a TAP write takes the whole frame or fails.
fn write_frame(tap: &File, pieces: &[IoSlice<'_>]) -> io::Result<()> {
    let want: usize = pieces.iter().map(|p| p.len()).sum();
    let mut tap = tap;
    match tap.write_vectored(pieces)? {
        n if n == want => Ok(()),
        n => Err(io::Error::other(format!(
            "short TAP write: {n} of {want} bytes"
        ))),
    }
}

fn buffers(count: usize, size: usize) -> Vec<Box<[u8]>> {
    (0..count)
        .map(|_| vec![0u8; size].into_boxed_slice())
        .collect()
}

/// What TX decided for one frame of the batch.
#[derive(Clone, Copy, Debug)]
enum Plan {
    /// Send `buf[range]` (VXLAN header already in place) as one datagram.
    Datagram {
        dst: SocketAddrV4,
        sock: usize,
        start: usize,
        end: usize,
    },
    /// Send segments `segs[first..last]` (GSO segment length `seg_len`).
    Segments {
        dst: SocketAddrV4,
        sock: usize,
        first: usize,
        last: usize,
        seg_len: usize,
    },
    /// Nothing to send (answered, dropped, or already counted).
    Skip,
}

impl Plan {
    fn socket(&self) -> Option<usize> {
        match self {
            Plan::Datagram { sock, .. } | Plan::Segments { sock, .. } => Some(*sock),
            Plan::Skip => None,
        }
    }
}

struct TxTask {
    index: usize,
    tap_name: String,
    tap: AsyncFd<File>,
    pool: Vec<AsyncFd<Socket>>,
    shared: Arc<Shared>,
    batch: usize,
}

/// Buffers of a TX task, reused for every batch.
struct TxBuffers {
    bufs: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    plans: Vec<Plan>,
    arena: Vec<u8>,
    segs: Vec<Segment>,
    reply: [u8; 128],
    send: SendBatch,
}

impl TxTask {
    async fn run(self) -> Result<(), DataplaneError> {
        let vnet = self.shared.offloads.tap_vnet_hdr;
        let head = if vnet { 0 } else { PLAIN_HEAD };
        let mut b = TxBuffers {
            bufs: buffers(self.batch, head + VNET_HDR_LEN + MAX_FRAME),
            lens: vec![0; self.batch],
            plans: vec![Plan::Skip; self.batch],
            arena: Vec::with_capacity(self.batch * ARENA_PER_FRAME),
            segs: Vec::with_capacity(self.batch * MAX_GSO_SEGMENTS),
            reply: [0; 128],
            send: SendBatch::new(self.batch * 4, self.batch * 4 + MAX_GSO_SEGMENTS),
        };
        let counters = self.shared.counters.worker(self.index);
        loop {
            let n = self.read_batch(&mut b.bufs, &mut b.lens, head).await?;
            let mut tally = BatchTally::default();
            b.arena.clear();
            b.segs.clear();
            if vnet {
                self.plan_offloaded(&mut b, n, &mut tally);
            } else {
                self.plan_plain(&mut b, n, &mut tally);
            }
            self.send_planned(&mut b, n, &mut tally).await;
            counters.add(&tally);
        }
    }

    /// Decides and prepares each frame read without a virtio header.
    fn plan_plain(&self, b: &mut TxBuffers, n: usize, tally: &mut BatchTally) {
        let router = self.shared.router.load();
        let header = vxlan::header_bytes(router.local().vni);
        for i in 0..n {
            let len = b.lens[i];
            let (head, rest) = b.bufs[i].split_at_mut(PLAIN_HEAD);
            let frame = &mut rest[..len];
            b.plans[i] = match router.egress(frame, &mut b.reply) {
                Egress::Encap { dst, flow } => {
                    if self.too_big(frame, len, &mut b.reply, tally) {
                        Plan::Skip
                    } else {
                        head.copy_from_slice(&header);
                        tally.encap_frames += 1;
                        tally.encap_bytes += len as u64;
                        Plan::Datagram {
                            dst: SocketAddrV4::new(dst, self.shared.port),
                            sock: flow as usize % self.pool.len(),
                            start: 0,
                            end: PLAIN_HEAD + len,
                        }
                    }
                }
                Egress::ArpReply { len } => {
                    self.tap_write(&[IoSlice::new(&b.reply[..len])], tally);
                    tally.arp_replies += 1;
                    Plan::Skip
                }
                Egress::Drop(reason) => {
                    tally.drop(reason);
                    Plan::Skip
                }
            };
        }
    }

    /// Decides and prepares each frame read with a virtio header: completes
    /// partial checksums and splits super-frames into the arena.
    fn plan_offloaded(&self, b: &mut TxBuffers, n: usize, tally: &mut BatchTally) {
        let router = self.shared.router.load();
        let header = vxlan::header_bytes(router.local().vni);
        let gso = self.shared.udp_gso.load(Relaxed);
        for i in 0..n {
            let len = b.lens[i];
            b.plans[i] = Plan::Skip;
            let Some(hdr) = VnetHdr::parse(&b.bufs[i][..VNET_HDR_LEN]) else {
                tally.drop(DropReason::BadOffload);
                continue;
            };
            let (vnet_area, rest) = b.bufs[i].split_at_mut(VNET_HDR_LEN);
            let frame = &mut rest[..len];
            if hdr.gso_type == GsoType::None
                && hdr.flags & F_NEEDS_CSUM != 0
                && offload::complete_checksum(
                    frame,
                    usize::from(hdr.csum_start),
                    usize::from(hdr.csum_offset),
                )
                .is_err()
            {
                tally.drop(DropReason::BadOffload);
                continue;
            }
            let (dst, flow) = match router.egress(frame, &mut b.reply) {
                Egress::Encap { dst, flow } => (SocketAddrV4::new(dst, self.shared.port), flow),
                Egress::ArpReply { len } => {
                    self.tap_write(
                        &[IoSlice::new(&ZERO_VNET), IoSlice::new(&b.reply[..len])],
                        tally,
                    );
                    tally.arp_replies += 1;
                    continue;
                }
                Egress::Drop(reason) => {
                    tally.drop(reason);
                    continue;
                }
            };
            let sock = flow as usize % self.pool.len();
            if hdr.gso_type == GsoType::None {
                if self.too_big(frame, len, &mut b.reply, tally) {
                    continue;
                }
                // The VXLAN header replaces the tail of the (parsed) virtio header.
                vnet_area[VNET_HDR_LEN - vxlan::HEADER_LEN..].copy_from_slice(&header);
                tally.encap_frames += 1;
                tally.encap_bytes += len as u64;
                b.plans[i] = Plan::Datagram {
                    dst,
                    sock,
                    start: VNET_HDR_LEN - vxlan::HEADER_LEN,
                    end: VNET_HDR_LEN + len,
                };
                continue;
            }
            let first = b.segs.len();
            let arena_mark = b.arena.len();
            let split = match offload::split(frame, &hdr, &header, &mut b.arena, &mut b.segs) {
                Ok(split) => split,
                Err(_) => {
                    b.segs.truncate(first);
                    b.arena.truncate(arena_mark);
                    tally.drop(DropReason::BadOffload);
                    continue;
                }
            };
            let inner_segment = split.segment_len - vxlan::HEADER_LEN;
            if offload::outer_len(inner_segment) > self.shared.underlay_mtu as usize {
                b.segs.truncate(first);
                b.arena.truncate(arena_mark);
                if !self.too_big(frame, inner_segment, &mut b.reply, tally) {
                    // No ICMP possible (no DF, IPv6): the super-frame cannot go out.
                    tally.drop(DropReason::TooBig);
                }
                continue;
            }
            tally.tso_frames += 1;
            tally.encap_frames += split.count as u64;
            tally.encap_bytes += b.segs[first..]
                .iter()
                .map(|s| (s.wire.len() - vxlan::HEADER_LEN) as u64)
                .sum::<u64>();
            b.plans[i] = Plan::Segments {
                dst,
                sock,
                first,
                last: b.segs.len(),
                seg_len: if gso { split.segment_len } else { 0 },
            };
        }
    }

    /// Handles a frame whose datagram would exceed the underlay MTU: IPv4 with DF
    /// gets an ICMP "fragmentation needed" back through the TAP and is dropped;
    /// anything else goes out and the kernel fragments the outer packet, as
    /// flannel's kernel device (no DF) would. Returns true when dropped.
    fn too_big(
        &self,
        frame: &[u8],
        inner_len: usize,
        reply: &mut [u8; 128],
        tally: &mut BatchTally,
    ) -> bool {
        let mtu = self.shared.underlay_mtu as usize;
        if offload::outer_len(inner_len) <= mtu {
            return false;
        }
        let overlay_mtu = (mtu - offload::outer_len(14)) as u16;
        match offload::icmp_frag_needed(frame, overlay_mtu, reply) {
            Some(len) => {
                let vnet = self.shared.offloads.tap_vnet_hdr;
                let zero: &[u8] = if vnet { &ZERO_VNET } else { &[] };
                self.tap_write(&[IoSlice::new(zero), IoSlice::new(&reply[..len])], tally);
                tally.icmp_too_big += 1;
                tally.drop(DropReason::TooBig);
                true
            }
            None => false,
        }
    }

    fn tap_write(&self, pieces: &[IoSlice<'_>], tally: &mut BatchTally) {
        if write_frame(self.tap.get_ref(), pieces).is_err() {
            tally.drop(DropReason::TapError);
        }
    }

    /// Sends what the plans say: one `sendmmsg` per run of frames that share a
    /// source socket, GSO messages of up to 64 segments.
    async fn send_planned(&self, b: &mut TxBuffers, n: usize, tally: &mut BatchTally) {
        let mut i = 0;
        while i < n {
            let Some(sock) = b.plans[i].socket() else {
                i += 1;
                continue;
            };
            let mut queue = b.send.queue();
            let mut failed_gso = false;
            while i < n {
                let plan = b.plans[i];
                match plan {
                    Plan::Skip => {}
                    p if p.socket() != Some(sock) => break,
                    Plan::Datagram {
                        dst, start, end, ..
                    } => {
                        let mut slices: [&[u8]; MAX_GSO_SEGMENTS] = [&[]; MAX_GSO_SEGMENTS];
                        slices[0] = &b.bufs[i][start..end];
                        let mut count = 1;
                        if self.shared.udp_gso.load(Relaxed) {
                            i = self.gso_run(&b.bufs, &b.plans[..n], i, &mut slices, &mut count);
                        }
                        if !queue.has_room(count) {
                            failed_gso |= send_all(&self.pool[sock], &mut queue, tally).await;
                        }
                        let gso = (count > 1).then_some(slices[0].len() as u16);
                        if !queue.push(dst, &slices[..count], gso, count as u32) {
                            tally.drops[DropReason::SocketError.index()] += count as u64;
                            tally.encap_frames = tally.encap_frames.saturating_sub(count as u64);
                        } else if count > 1 {
                            tally.gso_datagrams += count as u64;
                        }
                    }
                    Plan::Segments {
                        dst,
                        first,
                        last,
                        seg_len,
                        ..
                    } => {
                        // Without GSO (seg_len 0) every segment is its own datagram.
                        let per_msg = MAX_UDP_PAYLOAD
                            .checked_div(seg_len)
                            .map_or(1, |n| n.clamp(1, MAX_GSO_SEGMENTS));
                        let mut s = first;
                        while s < last {
                            let e = (s + per_msg).min(last);
                            if !queue.has_room(1) {
                                failed_gso |= send_all(&self.pool[sock], &mut queue, tally).await;
                            }
                            // The segments lie back to back in the arena: one slice.
                            let run = &b.arena[b.segs[s].wire.start..b.segs[e - 1].wire.end];
                            let gso = (e - s > 1 && seg_len > 0).then_some(seg_len as u16);
                            let frames = (e - s) as u32;
                            if !queue.push(dst, &[run], gso, frames) {
                                tally.drops[DropReason::SocketError.index()] += u64::from(frames);
                                tally.encap_frames =
                                    tally.encap_frames.saturating_sub(u64::from(frames));
                            }
                            s = e;
                        }
                    }
                }
                i += 1;
            }
            failed_gso |= send_all(&self.pool[sock], &mut queue, tally).await;
            if failed_gso && self.shared.udp_gso.swap(false, Relaxed) {
                tracing::warn!(
                    "UDP GSO failed with EIO (the egress device cannot checksum); sending one datagram per segment from now on"
                );
            }
        }
    }

    /// Gathers the datagrams that follow plan `i` (a datagram) in the batch and
    /// can leave with it in one UDP GSO message: same destination and source
    /// socket, the same length (the last may be shorter), at most 64 of them
    /// and 64 KiB, each within the underlay MTU. Small packets of one flow
    /// (DNS, QUIC, VoIP, TCP ACKs) then cross the underlay stack as one
    /// buffer, which the receiver's UDP_GRO keeps whole; on the wire they are
    /// the same datagrams. Fills `slices[1..]`, sets `count` and returns the
    /// index of the last plan taken.
    fn gso_run<'b>(
        &self,
        bufs: &'b [Box<[u8]>],
        plans: &[Plan],
        i: usize,
        slices: &mut [&'b [u8]; MAX_GSO_SEGMENTS],
        count: &mut usize,
    ) -> usize {
        let Plan::Datagram { dst, sock, .. } = plans[i] else {
            return i;
        };
        let size = slices[0].len();
        let mtu = self.shared.underlay_mtu as usize;
        if offload::outer_len(size - vxlan::HEADER_LEN) > mtu {
            return i;
        }
        let (mut last, mut total) = (i, size);
        for (j, plan) in plans.iter().enumerate().skip(i + 1) {
            match *plan {
                Plan::Skip => continue,
                Plan::Datagram {
                    dst: d,
                    sock: s,
                    start,
                    end,
                } if d == dst && s == sock && end - start <= size => {
                    if *count == MAX_GSO_SEGMENTS || total + (end - start) > MAX_UDP_PAYLOAD {
                        break;
                    }
                    slices[*count] = &bufs[j][start..end];
                    *count += 1;
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

    /// Reads up to `bufs.len()` frames at offset `head`, waiting for the first.
    async fn read_batch(
        &self,
        bufs: &mut [Box<[u8]>],
        lens: &mut [usize],
        head: usize,
    ) -> Result<usize, DataplaneError> {
        let vnet = self.shared.offloads.tap_vnet_hdr;
        loop {
            let mut guard = self.tap.readable().await.map_err(|e| self.tap_failed(e))?;
            let mut n = 0;
            while n < bufs.len() {
                match self.tap.get_ref().read(&mut bufs[n][head..]) {
                    Ok(len) if vnet && len < VNET_HDR_LEN => {}
                    Ok(len) if len == bufs[n].len() - head => {
                        // Filled the buffer: the frame may have been cut; never send half of one.
                        let mut tally = BatchTally::default();
                        tally.drop(DropReason::TooBig);
                        self.shared.counters.worker(self.index).add(&tally);
                    }
                    Ok(len) => {
                        lens[n] = if vnet { len - VNET_HDR_LEN } else { len };
                        n += 1;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        guard.clear_ready();
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(self.tap_failed(e)),
                }
            }
            if n > 0 {
                return Ok(n);
            }
        }
    }

    fn tap_failed(&self, source: io::Error) -> DataplaneError {
        DataplaneError::TapFailed {
            name: self.tap_name.clone(),
            source,
        }
    }
}

/// Sends every queued message, waiting while the socket buffer is full; a
/// message the socket refuses is dropped and counted. Returns true when a GSO
/// send failed with EIO (the caller turns GSO off).
async fn send_all(
    socket: &AsyncFd<Socket>,
    queue: &mut SendQueue<'_, '_>,
    tally: &mut BatchTally,
) -> bool {
    let mut gso_eio = false;
    while !queue.is_empty() {
        match queue.flush(socket.get_ref()) {
            Ok(_) => break,
            Err(e) if e.error.kind() == io::ErrorKind::WouldBlock => {
                match socket.writable().await {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => {
                        let lost = u64::from(queue.skip_all());
                        tally.drops[DropReason::SocketError.index()] += lost;
                        tally.encap_frames = tally.encap_frames.saturating_sub(lost);
                        break;
                    }
                }
            }
            Err(e) if e.error.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                gso_eio |= e.error.raw_os_error() == Some(libc::EIO);
                let lost = u64::from(queue.skip_first());
                tally.drops[DropReason::SocketError.index()] += lost;
                tally.encap_frames = tally.encap_frames.saturating_sub(lost);
            }
        }
    }
    gso_eio
}

/// A worker's receive tasks: one per listening socket.
struct RxTasks {
    verify: RxTask,
    covered: Option<RxTask>,
}

impl RxTasks {
    async fn run(self) -> Result<(), DataplaneError> {
        match self.covered {
            Some(covered) => tokio::select! {
                r = self.verify.run() => r,
                r = covered.run() => r,
            },
            None => self.verify.run().await,
        }
    }
}

struct RxTask {
    index: usize,
    /// The worker's TAP queue, only written to (the TX task reads it).
    tap: File,
    socket: AsyncFd<Socket>,
    /// This socket receives only datagrams with a nonzero outer UDP checksum
    /// (which the kernel verified): their inner checksums are not checked again.
    covered: bool,
    shared: Arc<Shared>,
    batch: usize,
}

impl RxTask {
    async fn run(self) -> Result<(), DataplaneError> {
        let gro = self.shared.offloads.udp_gro;
        let vnet = self.shared.offloads.tap_vnet_hdr;
        // With UDP GRO a slot holds a run of up to 64 datagrams.
        let slots = if gro {
            self.batch.div_ceil(8).max(2)
        } else {
            self.batch
        };
        let mut bufs = buffers(slots, MAX_FRAME);
        let mut meta = vec![RecvMeta::default(); slots];
        let mut recv = RecvBatch::new(slots);
        // Up to 64 datagrams per GRO slot.
        let mut coalescer = Coalescer::with_capacity(if gro { slots * 64 } else { slots });
        // UDP runs go to the TAP with a UDP GSO header: only when it took USO.
        coalescer.set_udp(self.shared.offloads.uso);
        let counters = self.shared.counters.worker(self.index);
        let verify = self.shared.verify_checksums && !self.covered;
        let overflows = &counters.socket_overflows[usize::from(self.covered)];
        loop {
            let n = self.recv_batch(&mut recv, &mut bufs, &mut meta).await?;
            let mut tally = BatchTally::default();
            let router = self.shared.router.load();
            coalescer.clear();
            for (k, (buf, m)) in bufs.iter_mut().zip(&meta).take(n).enumerate() {
                let Some(src) = m.src else {
                    tally.drop(DropReason::UnknownVtep);
                    continue;
                };
                if let Some(total) = m.kernel_drops {
                    overflows.store(u64::from(total), Relaxed);
                }
                if m.truncated {
                    tally.drop(DropReason::TooBig);
                    continue;
                }
                if m.control_truncated {
                    // The GRO segment size may be missing: splitting the run would
                    // glue datagrams together. Drop it (and count it).
                    tally.drop(DropReason::SocketError);
                    continue;
                }
                let stride = m.stride.max(1);
                let mut off = 0;
                // An empty datagram is still a datagram (and too short).
                if m.len == 0 {
                    tally.drop(DropReason::TooShort);
                }
                while off < m.len {
                    let end = (off + stride).min(m.len);
                    let datagram = &mut buf[off..end];
                    match router.ingress(*src.ip(), datagram) {
                        Ingress::Deliver => {
                            let frame = &mut datagram[vxlan::HEADER_LEN..];
                            if offload::check_checksums(frame, verify) == Checked::Invalid {
                                tally.drop(DropReason::BadChecksum);
                                off = end;
                                continue;
                            }
                            let frame = &*frame;
                            tally.checksum_trusted += u64::from(self.covered);
                            tally.decap_frames += 1;
                            tally.decap_bytes += frame.len() as u64;
                            let at = FrameRef {
                                slot: k as u32,
                                start: (off + vxlan::HEADER_LEN) as u32,
                                end: end as u32,
                            };
                            if vnet {
                                coalescer.push(frame, at);
                            } else {
                                self.tap_write(&[IoSlice::new(frame)], &mut tally);
                            }
                        }
                        Ingress::Drop(reason) => tally.drop(reason),
                    }
                    off = end;
                }
            }
            if vnet {
                coalescer.finish();
                self.write_coalesced(&coalescer, &bufs, &mut tally);
            }
            counters.add(&tally);
        }
    }

    fn write_coalesced(&self, c: &Coalescer, bufs: &[Box<[u8]>], tally: &mut BatchTally) {
        let mut pieces: [IoSlice<'_>; MAX_WRITE_PIECES] = [IoSlice::new(&[]); MAX_WRITE_PIECES];
        for w in c.writes() {
            match w {
                GroWrite::Single(r) => {
                    let frame = &bufs[r.slot as usize][r.range()];
                    self.tap_write(&[IoSlice::new(&ZERO_VNET), IoSlice::new(frame)], tally);
                }
                GroWrite::Merged { header, parts } => {
                    pieces[0] = IoSlice::new(c.header(*header));
                    let mut k = 1;
                    for p in c.parts(parts) {
                        pieces[k] = IoSlice::new(&bufs[p.slot as usize][p.range()]);
                        k += 1;
                    }
                    tally.gro_frames += 1;
                    self.tap_write(&pieces[..k], tally);
                }
            }
        }
    }

    fn tap_write(&self, pieces: &[IoSlice<'_>], tally: &mut BatchTally) {
        if write_frame(&self.tap, pieces).is_err() {
            tally.drop(DropReason::TapError);
        }
    }

    async fn recv_batch(
        &self,
        recv: &mut RecvBatch,
        bufs: &mut [Box<[u8]>],
        meta: &mut [RecvMeta],
    ) -> Result<usize, DataplaneError> {
        loop {
            let mut guard = self
                .socket
                .readable()
                .await
                .map_err(|source| DataplaneError::SocketFailed { source })?;
            match recv.recv(self.socket.get_ref(), bufs, meta) {
                Ok(n) if n > 0 => return Ok(n),
                Ok(_) => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // A transient error (e.g. a queued ICMP error): count and go on.
                    let mut tally = BatchTally::default();
                    tally.drop(DropReason::SocketError);
                    self.shared.counters.worker(self.index).add(&tally);
                }
            }
        }
    }
}
