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

struct TxTask {
    index: usize,
    tap_name: String,
    tap: AsyncFd<File>,
    pool: Vec<AsyncFd<Socket>>,
    shared: Arc<Shared>,
    batch: usize,
}

impl TxTask {
    async fn run(self) -> Result<(), DataplaneError> {
        let vnet = self.shared.offloads.tap_vnet_hdr;
        // With a virtio header the frame is read right after it; without,
        // after room for the VXLAN header.
        let head = if vnet { 0 } else { vxlan::HEADER_LEN };
        let mut bufs = buffers(self.batch, head + VNET_HDR_LEN + MAX_FRAME);
        let mut lens = vec![0; self.batch];
        let mut plan = TxBatch::with_capacity(self.batch);
        let mut send = SendBatch::new(self.batch * 4, self.batch * 4 + MAX_GSO_SEGMENTS);
        let counters = self.shared.counters.worker(self.index);
        loop {
            let n = self.read_batch(&mut bufs, &mut lens, head).await?;
            let config = TxConfig {
                vnet_hdr: vnet,
                port: self.shared.port,
                underlay_mtu: self.shared.underlay_mtu.load(Relaxed),
                sockets: self.pool.len(),
                udp_gso: self.shared.udp_gso.load(Relaxed),
            };
            plan.plan(
                &self.shared.router.load(),
                &config,
                &mut bufs[..n],
                &lens[..n],
            );
            let mut tally = *plan.tally();
            let zero: &[u8] = if vnet { &ZERO_VNET } else { &[] };
            for reply in plan.replies() {
                self.tap_write(&[IoSlice::new(zero), IoSlice::new(reply)], &mut tally);
            }
            self.send_planned(&plan, &bufs, &mut send, &mut tally).await;
            counters.add(&tally);
        }
    }

    fn tap_write(&self, pieces: &[IoSlice<'_>], tally: &mut Tally) {
        if write_frame(self.tap.get_ref(), pieces).is_err() {
            tally.drop(DropReason::TapError);
        }
    }

    /// Sends the planned messages: one `sendmmsg` per run of messages from
    /// one source socket.
    async fn send_planned(
        &self,
        plan: &TxBatch,
        bufs: &[Box<[u8]>],
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
                    failed_gso |= send_all(&self.pool[socket], &mut queue, tally).await;
                }
                if !queue.push(m.dst, &slices[..count], m.gso_size, m.frames) {
                    tally.unsent(u64::from(m.frames));
                }
                i += 1;
            }
            failed_gso |= send_all(&self.pool[socket], &mut queue, tally).await;
            if failed_gso && self.shared.udp_gso.swap(false, Relaxed) {
                tracing::warn!(
                    "UDP GSO failed with EIO (the egress device cannot checksum); sending one datagram per segment from now on"
                );
            }
        }
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
                        let mut tally = Tally::default();
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
    tally: &mut Tally,
) -> bool {
    let mut gso_eio = false;
    while !queue.is_empty() {
        match queue.flush(socket.get_ref()) {
            Ok(_) => break,
            Err(e) if e.error.kind() == io::ErrorKind::WouldBlock => {
                match socket.writable().await {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => {
                        tally.unsent(u64::from(queue.skip_all()));
                        break;
                    }
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
        let config = RxConfig {
            vnet_hdr: vnet,
            // UDP runs go to the TAP with a UDP GSO header: only when it took USO.
            uso: self.shared.offloads.uso,
            verify_checksums: self.shared.verify_checksums && !self.covered,
            outer_checksum_covered: self.covered,
        };
        let mut batch = RxBatch::new(config, slots, gro);
        let counters = self.shared.counters.worker(self.index);
        let overflows = &counters.socket_overflows[usize::from(self.covered)];
        loop {
            let n = self.recv_batch(&mut recv, &mut bufs, &mut meta).await?;
            for m in &meta[..n] {
                if let (Some(_), Some(total)) = (m.src, m.kernel_drops) {
                    overflows.store(u64::from(total), Relaxed);
                }
            }
            batch.decap(&self.shared.router.load(), &mut bufs[..n], &meta[..n]);
            let mut tally = *batch.tally();
            self.write_batch(&batch, &bufs, vnet, &mut tally);
            counters.add(&tally);
        }
    }

    /// Writes the batch's frames and super-frames to the TAP, in order.
    fn write_batch(&self, batch: &RxBatch, bufs: &[Box<[u8]>], vnet: bool, tally: &mut Tally) {
        let mut pieces: [IoSlice<'_>; MAX_WRITE_PIECES] = [IoSlice::new(&[]); MAX_WRITE_PIECES];
        let zero: &[u8] = if vnet { &ZERO_VNET } else { &[] };
        for w in batch.writes() {
            match w {
                GroWrite::Single(r) => {
                    let frame = &bufs[r.slot as usize][r.range()];
                    self.tap_write(&[IoSlice::new(zero), IoSlice::new(frame)], tally);
                }
                GroWrite::Merged { header, parts } => {
                    pieces[0] = IoSlice::new(batch.header(*header));
                    let mut k = 1;
                    for p in batch.parts(parts) {
                        pieces[k] = IoSlice::new(&bufs[p.slot as usize][p.range()]);
                        k += 1;
                    }
                    self.tap_write(&pieces[..k], tally);
                }
            }
        }
    }

    fn tap_write(&self, pieces: &[IoSlice<'_>], tally: &mut Tally) {
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
                    let mut tally = Tally::default();
                    tally.drop(DropReason::SocketError);
                    self.shared.counters.worker(self.index).add(&tally);
                }
            }
        }
    }
}
