//! The hot path's threads and syscalls: one TX task (TAP → UDP) and one RX
//! task (UDP → TAP) per worker. What to do with each frame and datagram is
//! decided by the core's batch planning ([`crate::core::batch`]); a task
//! here reads a batch, hands it to the plan, and performs what comes back.
//!
//! TX reads a batch of frames from the TAP (after their virtio-net header
//! when the TAP has one), has [`TxBatch::plan`] decide, writes the replies it
//! made (ARP, ICMP "fragmentation needed") back to the TAP, and sends its
//! messages, one `sendmmsg` per run of messages from one source socket, with
//! UDP GSO. RX receives a batch of (GRO-coalesced) datagrams with
//! `recvmmsg`, has [`RxBatch::decap`] check and coalesce them, and writes
//! each frame or super-frame to the TAP with one `writev`. Buffers, arenas
//! and header arrays are allocated once per worker: nothing is allocated per
//! packet.
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

use super::error::DataplaneError;
use super::shared::Shared;
use super::sys::{self, RecvBatch, RecvMeta, SendBatch, SendQueue};
use super::udp::{Listener, SourceSocket};
use crate::core::batch::{
    MAX_FRAME, MAX_GSO_SEGMENTS, RxBatch, RxConfig, Tally, TxBatch, TxConfig,
};
use crate::core::offload::{self, VNET_HDR_LEN, Write as GroWrite};
use crate::core::router::DropReason;
use crate::core::wire::vxlan;
use socket2::Socket;
use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;

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
    /// One thread per direction.
    pub split: bool,
    /// Busy polling after traffic (`busy_poll_us`).
    pub busy_poll: Duration,
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
pub(super) fn spawn(setup: WorkerSetup) -> Result<WorkerHandle, DataplaneError> {
    let WorkerSetup {
        index,
        tap_name,
        queue,
        rx,
        pool,
        shared,
        batch,
        split,
        busy_poll,
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
        // The sending sockets stay out of the reactor: registered, each send's
        // buffers freed (at once on veth, at TX completion on a NIC) would
        // raise a writable edge that wakes the sleeping thread for nothing.
        let pool = pool.into_iter().map(|s| s.socket).collect();
        Ok(TxTask::new(index, tap_name, tap, pool, shared, batch))
    };
    let build_rx = move || -> Result<[Option<RxTask>; 2], DataplaneError> {
        drop(shared.router.load());
        let task = |socket, tap, covered| -> Result<RxTask, DataplaneError> {
            let socket =
                sys::register(socket).map_err(|source| DataplaneError::SocketFailed { source })?;
            Ok(RxTask::new(
                index,
                tap,
                socket,
                covered,
                shared.clone(),
                batch,
            ))
        };
        let verify = task(rx.verify, verify_writer, rx.all_covered)?;
        let covered = match rx.covered.zip(covered_writer) {
            Some((socket, tap)) => Some(task(socket, tap, true)?),
            None => None,
        };
        Ok([Some(verify), covered])
    };
    let mut handle = WorkerHandle {
        threads: Vec::new(),
    };
    if split {
        handle.threads.push(start_thread(
            format!("weft-dp-{index}"),
            index,
            fatal.clone(),
            move || {
                let tx = build_tx()?;
                Ok(Pump {
                    tx: Some(tx),
                    rx: [None, None],
                    spin: SpinWindow::new(busy_poll),
                }
                .run())
            },
        )?);
        handle.threads.push(start_thread(
            format!("weft-rx-{index}"),
            index,
            fatal,
            move || {
                let rx = build_rx()?;
                Ok(Pump {
                    tx: None,
                    rx,
                    spin: SpinWindow::new(busy_poll),
                }
                .run())
            },
        )?);
    } else {
        handle.threads.push(start_thread(
            format!("weft-dp-{index}"),
            index,
            fatal,
            move || {
                let (tx, rx) = (build_tx()?, build_rx()?);
                Ok(Pump {
                    tx: Some(tx),
                    rx,
                    spin: SpinWindow::new(busy_poll),
                }
                .run())
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

struct TxTask {
    index: usize,
    tap_name: String,
    tap: AsyncFd<File>,
    /// The sending sockets, one per source port (not in the reactor).
    pool: Vec<Socket>,
    shared: Arc<Shared>,
    /// Where a frame is read: after room for the VXLAN header without a
    /// virtio header, at the start with one.
    head: usize,
    vnet: bool,
    bufs: Vec<Box<[u8]>>,
    lens: Vec<usize>,
    plan: TxBatch,
    send: SendBatch,
}

impl TxTask {
    fn new(
        index: usize,
        tap_name: String,
        tap: AsyncFd<File>,
        pool: Vec<Socket>,
        shared: Arc<Shared>,
        batch: usize,
    ) -> TxTask {
        let vnet = shared.offloads.tap_vnet_hdr;
        let head = if vnet { 0 } else { vxlan::HEADER_LEN };
        let flows = shared.flow_sockets.clone();
        TxTask {
            index,
            tap_name,
            tap,
            pool,
            shared,
            head,
            vnet,
            bufs: buffers(batch, head + VNET_HDR_LEN + MAX_FRAME),
            lens: vec![0; batch],
            plan: TxBatch::with_capacity(batch).spreading_flows(flows),
            send: SendBatch::new(batch * 4, batch * 4 + MAX_GSO_SEGMENTS),
        }
    }

    /// Handles a batch if the TAP queue holds frames now; never sleeps for
    /// frames (it may wait for room in a socket's send buffer).
    fn poll(&mut self) -> Result<bool, DataplaneError> {
        let how = FrameRead {
            head: self.head,
            vnet: self.vnet,
            shared: &self.shared,
            index: self.index,
        };
        match read_frames(self.tap.get_ref(), &mut self.bufs, &mut self.lens, how) {
            Ok(0) => Ok(false),
            Ok(n) => {
                self.handle(n);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(self.tap_failed(e)),
        }
    }

    /// Sleeps until the TAP queue is readable, then handles a batch. `empty`:
    /// the pump has just read the queue empty (see [`forget_readiness`]).
    async fn wait(&mut self, empty: bool) -> Result<(), DataplaneError> {
        if empty {
            forget_readiness(&self.tap).await;
        }
        let how = FrameRead {
            head: self.head,
            vnet: self.vnet,
            shared: &self.shared,
            index: self.index,
        };
        let (bufs, lens) = (&mut self.bufs, &mut self.lens);
        let read = self
            .tap
            .async_io(Interest::READABLE, |tap| {
                match read_frames(tap, bufs, lens, how) {
                    Ok(0) => Err(io::ErrorKind::WouldBlock.into()),
                    r => r,
                }
            })
            .await;
        let n = read.map_err(|e| self.tap_failed(e))?;
        self.handle(n);
        Ok(())
    }

    /// Plans the `n` frames read and performs the plan: replies to the TAP,
    /// messages to the underlay.
    fn handle(&mut self, n: usize) {
        let config = TxConfig {
            vnet_hdr: self.vnet,
            port: self.shared.port,
            underlay_mtu: self.shared.underlay_mtu.load(Relaxed),
            sockets: self.pool.len(),
            // Wraps after 18 hours; FlowSockets compares ticks wrapping.
            tick: self.shared.epoch.elapsed().as_secs() as u16,
            udp_gso: self.shared.udp_gso.load(Relaxed),
            ipv6_underlay: self.shared.ipv6_underlay,
        };
        self.plan.plan(
            &self.shared.router.load(),
            &config,
            &mut self.bufs[..n],
            &self.lens[..n],
        );
        let mut tally = *self.plan.tally();
        let zero: &[u8] = if self.vnet { &ZERO_VNET } else { &[] };
        for reply in self.plan.replies() {
            if write_frame(
                self.tap.get_ref(),
                &[IoSlice::new(zero), IoSlice::new(reply)],
            )
            .is_err()
            {
                tally.drop(DropReason::TapError);
            }
        }
        send_planned(
            &self.plan,
            &self.bufs,
            &self.pool,
            &self.shared,
            &mut self.send,
            &mut tally,
        );
        self.shared.counters.worker(self.index).add(&tally);
    }

    fn tap_failed(&self, source: io::Error) -> DataplaneError {
        DataplaneError::TapFailed {
            name: self.tap_name.clone(),
            source,
        }
    }
}

/// How frames are read from a TAP queue.
#[derive(Clone, Copy)]
struct FrameRead<'a> {
    head: usize,
    vnet: bool,
    shared: &'a Shared,
    index: usize,
}

/// Reads up to `bufs.len()` frames at offset `head` without waiting: the
/// count read, or `WouldBlock` when the queue was empty.
fn read_frames(
    tap: &File,
    bufs: &mut [Box<[u8]>],
    lens: &mut [usize],
    how: FrameRead<'_>,
) -> io::Result<usize> {
    let mut n = 0;
    let mut tap = tap;
    while n < bufs.len() {
        match tap.read(&mut bufs[n][how.head..]) {
            Ok(len) if how.vnet && len < VNET_HDR_LEN => {}
            Ok(len) if len == bufs[n].len() - how.head => {
                // Filled the buffer: the frame may have been cut; never send half of one.
                let mut tally = Tally::default();
                tally.drop(DropReason::TooBig);
                how.shared.counters.worker(how.index).add(&tally);
            }
            Ok(len) => {
                lens[n] = if how.vnet { len - VNET_HDR_LEN } else { len };
                n += 1;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && n > 0 => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Sends the planned messages: one `sendmmsg` per run of messages from one
/// source socket.
fn send_planned(
    plan: &TxBatch,
    bufs: &[Box<[u8]>],
    pool: &[Socket],
    shared: &Shared,
    send: &mut SendBatch,
    tally: &mut Tally,
) {
    let messages = plan.messages();
    let mut i = 0;
    while i < messages.len() {
        let socket = messages[i].socket;
        let mut queue = send.queue();
        let mut failed_gso = false;
        while let Some(m) = messages.get(i).filter(|m| m.socket == socket) {
            let mut slices: [&[u8]; MAX_GSO_SEGMENTS] = [&[]; MAX_GSO_SEGMENTS];
            let pieces = &plan.pieces()[m.pieces.clone()];
            for (slice, piece) in slices.iter_mut().zip(pieces) {
                *slice = plan.piece(bufs, piece);
            }
            let count = pieces.len().min(MAX_GSO_SEGMENTS);
            if !queue.has_room(count) {
                failed_gso |= send_all(&pool[socket], &mut queue, tally);
            }
            if !queue.push(m.dst, &slices[..count], m.gso_size, m.frames) {
                tally.unsent(u64::from(m.frames));
            }
            i += 1;
        }
        failed_gso |= send_all(&pool[socket], &mut queue, tally);
        if failed_gso && shared.udp_gso.swap(false, Relaxed) {
            tracing::warn!(
                "UDP GSO failed with EIO (the egress device cannot checksum); sending one datagram per segment from now on"
            );
        }
    }
}

/// Longest a thread waits for room in a sending socket's buffer before it
/// drops what it could not send (and counts it as `socket_error`).
const SEND_STALL: Duration = Duration::from_secs(1);

/// Sends every queued message, waiting while the socket buffer is full (at
/// most [`SEND_STALL`] at a time); a message the socket refuses is dropped
/// and counted. Returns true when a GSO send failed with EIO (the caller
/// turns GSO off).
///
/// The wait blocks the thread in `poll(2)` rather than awaiting the reactor:
/// the sending sockets are not registered with it (see `spawn`), and the
/// pump is the thread's one task, so an await would hold up the same work.
fn send_all(socket: &Socket, queue: &mut SendQueue<'_, '_>, tally: &mut Tally) -> bool {
    let mut gso_eio = false;
    while !queue.is_empty() {
        match queue.flush(socket) {
            Ok(_) => break,
            Err(e) if e.error.kind() == io::ErrorKind::WouldBlock => {
                if !wait_writable(socket, SEND_STALL) {
                    tally.unsent(u64::from(queue.skip_all()));
                    break;
                }
            }
            Err(e) if e.error.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                gso_eio |= e.error.raw_os_error() == Some(libc::EIO);
                tally.unsent(u64::from(queue.skip_first()));
            }
        }
    }
    gso_eio
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
    vnet: bool,
    bufs: Vec<Box<[u8]>>,
    meta: Vec<RecvMeta>,
    recv: RecvBatch,
    decap: RxBatch,
}

impl RxTask {
    fn new(
        index: usize,
        tap: File,
        socket: AsyncFd<Socket>,
        covered: bool,
        shared: Arc<Shared>,
        batch: usize,
    ) -> RxTask {
        let gro = shared.offloads.udp_gro;
        let vnet = shared.offloads.tap_vnet_hdr;
        // With UDP GRO a slot holds a run of up to 64 datagrams.
        let slots = if gro { batch.div_ceil(8).max(2) } else { batch };
        let config = RxConfig {
            vnet_hdr: vnet,
            // UDP runs go to the TAP with a UDP GSO header: only when it took USO.
            uso: shared.offloads.uso,
            verify_checksums: shared.verify_checksums && !covered,
            outer_checksum_covered: covered,
        };
        RxTask {
            index,
            tap,
            socket,
            covered,
            vnet,
            bufs: buffers(slots, MAX_FRAME),
            meta: vec![RecvMeta::default(); slots],
            recv: RecvBatch::new(slots),
            decap: RxBatch::new(config, slots, gro),
            shared,
        }
    }

    /// Handles a batch if the socket holds datagrams now, without sleeping.
    /// False only when the socket was empty (`WouldBlock`): a transient error
    /// counted instead of a batch may have more datagrams behind it.
    fn poll(&mut self) -> Result<bool, DataplaneError> {
        match self.recv_now() {
            Ok(0) => Ok(true),
            Ok(n) => {
                self.handle(n);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(source) => Err(DataplaneError::SocketFailed { source }),
        }
    }

    /// Sleeps until the socket is readable, then handles a batch (none when
    /// a transient error was counted instead: the pump polls again, as more
    /// datagrams may be queued behind it). `empty`: the pump has just read the
    /// socket empty (see [`forget_readiness`]).
    async fn wait(&mut self, empty: bool) -> Result<(), DataplaneError> {
        if empty {
            forget_readiness(&self.socket).await;
        }
        let (recv, bufs, meta) = (&mut self.recv, &mut self.bufs, &mut self.meta);
        let shared = &self.shared;
        let index = self.index;
        let n = self
            .socket
            .async_io(Interest::READABLE, |socket| {
                receive(socket, recv, bufs, meta, shared, index)
            })
            .await
            .map_err(|source| DataplaneError::SocketFailed { source })?;
        self.handle(n);
        Ok(())
    }

    fn recv_now(&mut self) -> io::Result<usize> {
        receive(
            self.socket.get_ref(),
            &mut self.recv,
            &mut self.bufs,
            &mut self.meta,
            &self.shared,
            self.index,
        )
    }

    /// Checks, decapsulates and coalesces the `n` datagrams received and
    /// writes the frames and super-frames to the TAP.
    fn handle(&mut self, n: usize) {
        let counters = self.shared.counters.worker(self.index);
        let overflows = &counters.socket_overflows[usize::from(self.covered)];
        for m in &self.meta[..n] {
            if let (Some(_), Some(total)) = (m.src, m.kernel_drops) {
                overflows.store(u64::from(total), Relaxed);
            }
        }
        self.decap.decap(
            &self.shared.router.load(),
            &mut self.bufs[..n],
            &self.meta[..n],
        );
        let mut tally = *self.decap.tally();
        self.write_batch(&mut tally);
        counters.add(&tally);
    }

    /// Writes the batch's frames and super-frames to the TAP, in order.
    fn write_batch(&self, tally: &mut Tally) {
        let mut pieces: [IoSlice<'_>; MAX_WRITE_PIECES] = [IoSlice::new(&[]); MAX_WRITE_PIECES];
        let zero: &[u8] = if self.vnet { &ZERO_VNET } else { &[] };
        let (batch, bufs) = (&self.decap, &self.bufs);
        for w in batch.writes() {
            let written = match w {
                GroWrite::Single(r) => {
                    let frame = &bufs[r.slot as usize][r.range()];
                    write_frame(&self.tap, &[IoSlice::new(zero), IoSlice::new(frame)])
                }
                GroWrite::Merged { header, parts } => {
                    pieces[0] = IoSlice::new(batch.header(*header));
                    let mut k = 1;
                    for p in batch.parts(parts) {
                        pieces[k] = IoSlice::new(&bufs[p.slot as usize][p.range()]);
                        k += 1;
                    }
                    write_frame(&self.tap, &pieces[..k])
                }
            };
            if written.is_err() {
                tally.drop(DropReason::TapError);
            }
        }
    }
}

/// Receives a batch without waiting: the count, or `WouldBlock`. Any other
/// error is transient (e.g. a queued ICMP error): counted, and reported as
/// nothing received.
fn receive(
    socket: &Socket,
    recv: &mut RecvBatch,
    bufs: &mut [Box<[u8]>],
    meta: &mut [RecvMeta],
    shared: &Shared,
    index: usize,
) -> io::Result<usize> {
    loop {
        match recv.recv(socket, bufs, meta) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                let mut tally = Tally::default();
                tally.drop(DropReason::SocketError);
                shared.counters.worker(index).add(&tally);
                return Ok(0);
            }
        }
    }
}

/// Bounded busy polling: how long a thread keeps polling its descriptors
/// after traffic before it sleeps in the reactor (`busy_poll_us`).
///
/// A sleeping thread costs a wake-up when the next packet comes (tens of
/// microseconds on a VM whose idle vCPU halts), and a request's reply comes
/// soon after the request: polling a little longer catches it awake. The
/// window is on while gaps between bursts are shorter than it; after
/// [`SpinWindow::GIVE_UP`] longer gaps in a row (sparse traffic, where every
/// spin is wasted) it is off until a gap fits again.
#[derive(Debug)]
struct SpinWindow {
    max: Duration,
    on: bool,
    misses: u32,
}

impl SpinWindow {
    /// Gaps longer than the window in a row before spinning stops.
    const GIVE_UP: u32 = 8;

    fn new(max: Duration) -> SpinWindow {
        SpinWindow {
            max,
            on: !max.is_zero(),
            misses: 0,
        }
    }

    fn window(&self) -> Duration {
        if self.on { self.max } else { Duration::ZERO }
    }

    /// Traffic came again `gap` after the last.
    fn after_gap(&mut self, gap: Duration) {
        if self.max.is_zero() {
        } else if gap <= self.max {
            self.on = true;
            self.misses = 0;
        } else {
            self.misses = self.misses.saturating_add(1);
            if self.misses >= Self::GIVE_UP {
                self.on = false;
            }
        }
    }
}

/// Blocks until `socket` has room in its send buffer (or a pending error to
/// report), for at most `limit`. False when it had none by then.
fn wait_writable(socket: &Socket, limit: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => return false,
            Ok(_) => return true,
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return false,
        }
    }
}

/// Clears tokio's record that `fd` is readable, without a syscall, for a
/// descriptor the pump has just read until `WouldBlock`.
///
/// The pump reads its descriptors directly, past tokio, so the record is
/// stale: left set, the wait that follows would first try a read that can
/// only fail (one wasted syscall per descriptor per sleep, four per ping
/// round trip). Clearing it loses nothing: this thread's runtime is
/// current-thread, and its reactor only runs when the pump awaits, so no
/// readiness newer than that last read can have been recorded yet; data that
/// came since raised an edge that the reactor's next `epoll_wait` reports.
async fn forget_readiness<T: std::os::fd::AsRawFd>(fd: &AsyncFd<T>) {
    std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(Ok(mut guard)) = fd.poll_read_ready(cx) {
            guard.clear_ready();
        }
        std::task::Poll::Ready(())
    })
    .await;
}

/// What one dataplane thread runs: the TX task, the RX tasks, or both.
///
/// After traffic the thread polls every descriptor it owns directly (a
/// non-blocking read each), handling what it finds, so a reply that arrives
/// on another of its descriptors while it works (the kernel answers a frame
/// written to the TAP within that write) is taken without a wake-up; within
/// the spin window it keeps polling; then it sleeps in the reactor until one
/// is readable.
struct Pump {
    tx: Option<TxTask>,
    rx: [Option<RxTask>; 2],
    spin: SpinWindow,
}

/// Polling rounds between yields to the thread's runtime.
const YIELD_EVERY: u32 = 64;

impl Pump {
    /// Runs until a descriptor fails; outside tokio's cooperative budget.
    async fn run(self) -> Result<(), DataplaneError> {
        tokio::task::unconstrained(self.run_inner()).await
    }

    async fn run_inner(mut self) -> Result<(), DataplaneError> {
        // The runtime keeps yielded tasks' wakers in a list it allocates on
        // the first yield: yield once now, before any traffic, so that a
        // thread whose first traffic comes late does not allocate then.
        tokio::task::yield_now().await;
        let mut last = Instant::now();
        let mut quiet = false;
        let mut rounds: u32 = 0;
        loop {
            let mut busy = false;
            if let Some(tx) = &mut self.tx {
                busy |= tx.poll()?;
            }
            for rx in self.rx.iter_mut().flatten() {
                busy |= rx.poll()?;
            }
            // The pump runs outside tokio's cooperative budget (a budget
            // running out in two branches at once pushed a second deferred
            // waker: an allocation mid-traffic); it yields on its own, so a
            // stop is still seen under endless traffic.
            rounds = rounds.wrapping_add(1);
            // A yield lets the runtime turn its reactor: readiness it records
            // then may be news, so the descriptors no longer count as empty.
            let yielded = rounds.is_multiple_of(YIELD_EVERY);
            if yielded {
                tokio::task::yield_now().await;
            }
            if busy {
                if quiet {
                    self.spin.after_gap(last.elapsed());
                    quiet = false;
                }
                last = Instant::now();
                continue;
            }
            quiet = true;
            if last.elapsed() < self.spin.window() {
                std::hint::spin_loop();
                continue;
            }
            self.sleep(!yielded).await?;
            self.spin.after_gap(last.elapsed());
            quiet = false;
            last = Instant::now();
        }
    }

    /// Sleeps until one descriptor is readable and handles that batch.
    /// `empty`: every descriptor has just been read empty, with no await
    /// since.
    async fn sleep(&mut self, empty: bool) -> Result<(), DataplaneError> {
        let Pump { tx, rx, .. } = self;
        let [rx0, rx1] = rx;
        tokio::select! {
            r = async {
                match tx {
                    Some(tx) => tx.wait(empty).await,
                    None => std::future::pending().await,
                }
            } => r,
            r = async {
                match rx0 {
                    Some(rx) => rx.wait(empty).await,
                    None => std::future::pending().await,
                }
            } => r,
            r = async {
                match rx1 {
                    Some(rx) => rx.wait(empty).await,
                    None => std::future::pending().await,
                }
            } => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SpinWindow;
    use std::time::Duration;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_zero_window_never_spins() {
        let mut w = SpinWindow::new(Duration::ZERO);
        assert_eq!(w.window(), Duration::ZERO);
        w.after_gap(Duration::ZERO);
        assert_eq!(w.window(), Duration::ZERO);
    }

    #[test]
    fn the_window_stops_after_long_gaps_in_a_row_and_resumes_when_one_fits() {
        let mut w = SpinWindow::new(100 * US);
        assert_eq!(w.window(), 100 * US);
        for _ in 0..SpinWindow::GIVE_UP - 1 {
            w.after_gap(10_000 * US);
        }
        assert_eq!(w.window(), 100 * US, "not yet: fewer than GIVE_UP misses");
        w.after_gap(10_000 * US);
        assert_eq!(w.window(), Duration::ZERO, "sparse traffic: off");
        w.after_gap(80 * US);
        assert_eq!(w.window(), 100 * US, "a gap that fits turns it on");
    }

    #[test]
    fn request_reply_traffic_keeps_the_window() {
        // A reply soon after each request, then a long pause: the short gaps
        // reset the count of long ones, so the window stays on.
        let mut w = SpinWindow::new(100 * US);
        for _ in 0..100 {
            w.after_gap(60 * US);
            w.after_gap(10_000 * US);
        }
        assert_eq!(w.window(), 100 * US);
    }
}
