//! The hot path: one TX task (TAP → UDP) and one RX task (UDP → TAP) per worker.
//!
//! Error policy:
//! - `WouldBlock` waits for readiness; `Interrupted` retries.
//! - A datagram the socket refuses (unreachable, too big, filtered) is dropped
//!   and counted as `socket_error`; the batch goes on.
//! - A frame the TAP refuses is dropped and counted as `tap_error`.
//! - Any other TAP read error means the device is gone, and a failing
//!   readiness wait means the runtime is shutting down: the worker reports it
//!   as fatal and stops; the agent exits non-zero so its supervisor restarts it.

use super::counters::BatchTally;
use super::sys::{self, RecvBatch, RecvMeta, SendBatch, SendQueue};
use super::udp::SourceSocket;
use super::{DataplaneError, Shared, offload::ActiveOffloads};
use crate::core::arp::REPLY_LEN;
use crate::core::router::{DropReason, Egress, Ingress};
use crate::core::vxlan;
use socket2::Socket;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::SocketAddrV4;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Bytes reserved in front of each TAP read for the VXLAN header.
const HEADROOM: usize = vxlan::HEADER_LEN;
/// Largest frame or datagram handled.
const MAX_FRAME: usize = 65535;

pub(super) struct WorkerSetup {
    pub index: usize,
    pub tap_name: String,
    pub queue: OwnedFd,
    pub rx: Socket,
    pub pool: Vec<SourceSocket>,
    pub shared: Arc<Shared>,
    pub batch: usize,
    pub offloads: ActiveOffloads,
    pub fatal: mpsc::UnboundedSender<DataplaneError>,
}

pub(super) fn spawn(setup: WorkerSetup) -> Result<Vec<JoinHandle<()>>, DataplaneError> {
    let tap_failed = |source| DataplaneError::TapFailed {
        name: setup.tap_name.clone(),
        source,
    };
    let tap = Arc::new(sys::register(File::from(setup.queue)).map_err(tap_failed)?);
    let rx = sys::register(setup.rx).map_err(|source| DataplaneError::SocketFailed { source })?;
    let pool = setup
        .pool
        .into_iter()
        .map(|s| sys::register(s.socket))
        .collect::<io::Result<Vec<_>>>()
        .map_err(|source| DataplaneError::SocketFailed { source })?;
    let _ = setup.offloads;
    let tx = TxTask {
        index: setup.index,
        tap_name: setup.tap_name.clone(),
        tap: tap.clone(),
        pool,
        shared: setup.shared.clone(),
        batch: setup.batch,
    };
    let rx = RxTask {
        index: setup.index,
        tap,
        socket: rx,
        shared: setup.shared,
        batch: setup.batch,
    };
    let fatal_tx = setup.fatal.clone();
    let fatal_rx = setup.fatal;
    Ok(vec![
        tokio::spawn(async move {
            if let Err(e) = tx.run().await {
                let _ = fatal_tx.send(e);
            }
        }),
        tokio::spawn(async move {
            if let Err(e) = rx.run().await {
                let _ = fatal_rx.send(e);
            }
        }),
    ])
}

/// Writes one frame to the TAP: a TAP write takes the whole frame or fails.
fn write_frame(tap: &File, frame: &[u8]) -> io::Result<()> {
    let mut tap = tap;
    match tap.write(frame)? {
        n if n == frame.len() => Ok(()),
        n => Err(io::Error::other(format!(
            "short TAP write: {n} of {} bytes",
            frame.len()
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
    tap: Arc<AsyncFd<File>>,
    pool: Vec<AsyncFd<Socket>>,
    shared: Arc<Shared>,
    batch: usize,
}

impl TxTask {
    async fn run(self) -> Result<(), DataplaneError> {
        let mut bufs = buffers(self.batch, HEADROOM + MAX_FRAME);
        let mut lens = vec![0usize; self.batch];
        let mut decisions = vec![Egress::Drop(DropReason::TooShort); self.batch];
        let mut reply = [0u8; REPLY_LEN];
        let mut send = SendBatch::new(self.batch, self.batch);
        let counters = self.shared.counters.worker(self.index);
        let port = self.shared.port;
        loop {
            let n = self.read_batch(&mut bufs, &mut lens).await?;
            let mut tally = BatchTally::default();
            let router = self.shared.router.load();
            let header = vxlan::header_bytes(router.local().vni);
            for i in 0..n {
                let (head, frame) = bufs[i].split_at_mut(HEADROOM);
                decisions[i] = router.egress(&frame[..lens[i]], &mut reply);
                match decisions[i] {
                    Egress::Encap { .. } => head.copy_from_slice(&header),
                    // ARP replies go straight back into the TAP.
                    Egress::ArpReply { len } => {
                        match write_frame(self.tap.get_ref(), &reply[..len]) {
                            Ok(_) => tally.arp_replies += 1,
                            Err(_) => tally.drop(DropReason::TapError),
                        }
                    }
                    Egress::Drop(reason) => tally.drop(reason),
                }
            }
            // One sendmmsg per run of frames that share a source socket.
            let mut i = 0;
            while i < n {
                let Egress::Encap { flow, .. } = decisions[i] else {
                    i += 1;
                    continue;
                };
                let sock = flow as usize % self.pool.len();
                let mut queue = send.queue();
                while i < n && queue.has_room(1) {
                    match decisions[i] {
                        Egress::Encap { dst, flow } if flow as usize % self.pool.len() == sock => {
                            queue.push(
                                SocketAddrV4::new(dst, port),
                                &[&bufs[i][..HEADROOM + lens[i]]],
                                None,
                            );
                            tally.encap_frames += 1;
                            tally.encap_bytes += lens[i] as u64;
                        }
                        Egress::Encap { .. } => break,
                        _ => {}
                    }
                    i += 1;
                }
                send_all(&self.pool[sock], &mut queue, &mut tally).await;
            }
            counters.add(&tally);
        }
    }

    /// Reads up to `bufs.len()` frames, waiting for the first.
    async fn read_batch(
        &self,
        bufs: &mut [Box<[u8]>],
        lens: &mut [usize],
    ) -> Result<usize, DataplaneError> {
        loop {
            let mut guard = self.tap.readable().await.map_err(|e| self.tap_failed(e))?;
            let mut n = 0;
            while n < bufs.len() {
                match self.tap.get_ref().read(&mut bufs[n][HEADROOM..]) {
                    Ok(len) => {
                        lens[n] = len;
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

/// Sends every queued message, waiting while the socket buffer is full;
/// a message the socket refuses is dropped and counted.
async fn send_all(socket: &AsyncFd<Socket>, queue: &mut SendQueue<'_, '_>, tally: &mut BatchTally) {
    while !queue.is_empty() {
        match queue.flush(socket.get_ref()) {
            Ok(_) => return,
            Err(e) if e.error.kind() == io::ErrorKind::WouldBlock => {
                match socket.writable().await {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => return,
                }
            }
            Err(e) if e.error.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                tally.drop(DropReason::SocketError);
                tally.encap_frames = tally.encap_frames.saturating_sub(1);
                queue.skip_first();
            }
        }
    }
}

struct RxTask {
    index: usize,
    tap: Arc<AsyncFd<File>>,
    socket: AsyncFd<Socket>,
    shared: Arc<Shared>,
    batch: usize,
}

impl RxTask {
    async fn run(self) -> Result<(), DataplaneError> {
        let mut bufs = buffers(self.batch, MAX_FRAME);
        let mut meta = vec![RecvMeta::default(); self.batch];
        let mut recv = RecvBatch::new(self.batch);
        let counters = self.shared.counters.worker(self.index);
        loop {
            let n = self.recv_batch(&mut recv, &mut bufs, &mut meta).await?;
            let mut tally = BatchTally::default();
            let router = self.shared.router.load();
            for (buf, m) in bufs.iter().zip(&meta).take(n) {
                let Some(src) = m.src else {
                    tally.drop(DropReason::UnknownVtep);
                    continue;
                };
                if m.truncated {
                    tally.drop(DropReason::TooBig);
                    continue;
                }
                let datagram = &buf[..m.len];
                match router.ingress(*src.ip(), datagram) {
                    Ingress::Deliver => {
                        let frame = &datagram[vxlan::HEADER_LEN..];
                        match write_frame(self.tap.get_ref(), frame) {
                            Ok(_) => {
                                tally.decap_frames += 1;
                                tally.decap_bytes += frame.len() as u64;
                            }
                            Err(_) => tally.drop(DropReason::TapError),
                        }
                    }
                    Ingress::Drop(reason) => tally.drop(reason),
                }
            }
            counters.add(&tally);
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
