//! Dataplane counters: one cache-line-aligned block of atomics per worker,
//! bumped once per batch with relaxed adds (no locks, no sharing between
//! workers), summed only when someone reads them (metrics, status).

use crate::core::batch::Tally;
use crate::core::router::DropReason;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One worker's counters.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct WorkerCounters {
    /// Frames encapsulated (segments of super-frames one by one).
    pub encap_frames: AtomicU64,
    /// Inner bytes encapsulated.
    pub encap_bytes: AtomicU64,
    /// Frames decapsulated.
    pub decap_frames: AtomicU64,
    /// Inner bytes decapsulated.
    pub decap_bytes: AtomicU64,
    /// ARP requests answered.
    pub arp_replies: AtomicU64,
    /// Neighbor Solicitations answered.
    pub ndp_replies: AtomicU64,
    /// Super-frames (TSO) read from the TAP and split.
    pub tso_frames: AtomicU64,
    /// Frames (not split from a super-frame) that left with others of their
    /// flow in one UDP GSO message.
    pub gso_datagrams: AtomicU64,
    /// Super-frames written to the TAP after coalescing.
    pub gro_frames: AtomicU64,
    /// ICMP "fragmentation needed" messages sent back into the TAP.
    pub icmp_too_big: AtomicU64,
    /// Decapsulated frames whose inner checksums were not checked again: a
    /// nonzero outer UDP checksum, verified by the kernel, covered them.
    pub checksum_trusted: AtomicU64,
    /// Packets the kernel dropped on the listening sockets because their
    /// queue was full (`SO_RXQ_OVFL`, a running total the kernel reports per
    /// socket; with UDP GRO each is a run of up to 44 datagrams): the socket
    /// for zero outer checksums, and the other.
    pub socket_overflows: [AtomicU64; 2],
    /// Frames and datagrams dropped, by [`DropReason::index`].
    pub drops: [AtomicU64; DropReason::COUNT],
}

impl WorkerCounters {
    /// Adds a batch's tally (the only write on the hot path).
    pub fn add(&self, t: &Tally) {
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Relaxed);
            }
        };
        add(&self.encap_frames, t.encap_frames);
        add(&self.encap_bytes, t.encap_bytes);
        add(&self.decap_frames, t.decap_frames);
        add(&self.decap_bytes, t.decap_bytes);
        add(&self.arp_replies, t.arp_replies);
        add(&self.ndp_replies, t.ndp_replies);
        add(&self.tso_frames, t.tso_frames);
        add(&self.gso_datagrams, t.gso_datagrams);
        add(&self.gro_frames, t.gro_frames);
        add(&self.icmp_too_big, t.icmp_too_big);
        add(&self.checksum_trusted, t.checksum_trusted);
        for (c, v) in self.drops.iter().zip(t.drops) {
            add(c, v);
        }
    }
}

/// All workers' counters.
#[derive(Debug)]
pub struct Counters {
    workers: Box<[WorkerCounters]>,
}

/// A point-in-time sum over workers: the batch tallies added up, and what
/// only the sum knows (serialised flat, one JSON object).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    /// Every worker's batch tallies, summed.
    #[serde(flatten)]
    pub frames: Tally,
    /// Heap allocations on dataplane threads since start (with weftd's counting allocator).
    pub dataplane_allocations: u64,
    /// Packets the kernel dropped for a full socket queue.
    pub socket_overflows: u64,
    /// Frames the kernel dropped on the TAP device instead of queueing them
    /// for weft (its TX drops since the device was created: a queue full
    /// because weft fell behind, or no weft attached). Not the workers':
    /// `Shared::counters` reads it with [`tap_queue_drops`].
    pub tap_queue_drops: u64,
}

impl CounterSnapshot {
    /// Drops for one reason.
    pub fn drop_count(&self, reason: DropReason) -> u64 {
        self.frames.drops[reason.index()]
    }

    /// Drops for every reason.
    pub fn total_drops(&self) -> u64 {
        self.frames.drops.iter().sum()
    }

    /// Adds `other`'s counts (the IPv6 dataplane's to the IPv4 one's in
    /// dual stack). The allocation count is process-wide: kept, not added.
    pub fn merge(&mut self, other: &CounterSnapshot) {
        let (a, b) = (&mut self.frames, &other.frames);
        a.encap_frames += b.encap_frames;
        a.encap_bytes += b.encap_bytes;
        a.decap_frames += b.decap_frames;
        a.decap_bytes += b.decap_bytes;
        a.arp_replies += b.arp_replies;
        a.ndp_replies += b.ndp_replies;
        a.tso_frames += b.tso_frames;
        a.gso_datagrams += b.gso_datagrams;
        a.gro_frames += b.gro_frames;
        a.icmp_too_big += b.icmp_too_big;
        a.checksum_trusted += b.checksum_trusted;
        for (sum, d) in a.drops.iter_mut().zip(b.drops) {
            *sum += d;
        }
        self.socket_overflows += other.socket_overflows;
        self.tap_queue_drops += other.tap_queue_drops;
        self.dataplane_allocations = self.dataplane_allocations.max(other.dataplane_allocations);
    }
}

impl Counters {
    /// Counters for `workers` workers (at least one).
    pub fn new(workers: usize) -> Counters {
        Counters {
            workers: (0..workers.max(1))
                .map(|_| WorkerCounters::default())
                .collect(),
        }
    }

    /// The counters of worker `index`.
    pub fn worker(&self, index: usize) -> &WorkerCounters {
        &self.workers[index % self.workers.len()]
    }

    /// Frames each worker moved, `(encapsulated, decapsulated)`, in worker order.
    pub fn per_worker(&self) -> Vec<(u64, u64)> {
        self.workers
            .iter()
            .map(|w| (w.encap_frames.load(Relaxed), w.decap_frames.load(Relaxed)))
            .collect()
    }

    /// Sums every worker's counters now.
    pub fn snapshot(&self) -> CounterSnapshot {
        let mut s = CounterSnapshot {
            dataplane_allocations: super::sys::dataplane_allocations(),
            ..CounterSnapshot::default()
        };
        for w in self.workers.iter() {
            s.frames.encap_frames += w.encap_frames.load(Relaxed);
            s.frames.encap_bytes += w.encap_bytes.load(Relaxed);
            s.frames.decap_frames += w.decap_frames.load(Relaxed);
            s.frames.decap_bytes += w.decap_bytes.load(Relaxed);
            s.frames.arp_replies += w.arp_replies.load(Relaxed);
            s.frames.ndp_replies += w.ndp_replies.load(Relaxed);
            s.frames.tso_frames += w.tso_frames.load(Relaxed);
            s.frames.gso_datagrams += w.gso_datagrams.load(Relaxed);
            s.frames.gro_frames += w.gro_frames.load(Relaxed);
            s.frames.icmp_too_big += w.icmp_too_big.load(Relaxed);
            s.frames.checksum_trusted += w.checksum_trusted.load(Relaxed);
            s.socket_overflows += w
                .socket_overflows
                .iter()
                .map(|c| c.load(Relaxed))
                .sum::<u64>();
            for (sum, c) in s.frames.drops.iter_mut().zip(&w.drops) {
                *sum += c.load(Relaxed);
            }
        }
        s
    }
}

/// The TX drops of `device` in `/proc/net/dev` (this thread's network
/// namespace): frames the kernel could not queue for weft. Zero when the
/// file or the device cannot be read (the count is for operators; a failed
/// read must not fail the status).
pub fn tap_queue_drops(device: &str) -> u64 {
    std::fs::read_to_string("/proc/net/dev")
        .ok()
        .and_then(|text| tx_drops_in_proc_net_dev(&text, device))
        .unwrap_or(0)
}

/// The transmit `drop` column of `device`'s line in the text of
/// `/proc/net/dev`: after `name:` come 8 receive fields (bytes, packets,
/// errs, drop, fifo, frame, compressed, multicast), then transmit bytes,
/// packets, errs, drop.
fn tx_drops_in_proc_net_dev(text: &str, device: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (name, fields) = line.split_once(':')?;
        (name.trim() == device).then(|| fields.split_whitespace().nth(11)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_drops_come_from_the_devices_own_line() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     100       2    0    0    0     0          0         0      100       2    0    0    0     0       0          0
flannel.1: 25436332  385370    0    7    0     0          0         0 28895041270  548135    0 4093    0     0       0          0
flannel.10:       0       0    0    0    0     0          0         0        0       0    0   99    0     0       0          0
";
        assert_eq!(tx_drops_in_proc_net_dev(text, "flannel.1"), Some(4093));
        assert_eq!(tx_drops_in_proc_net_dev(text, "flannel.10"), Some(99));
        assert_eq!(tx_drops_in_proc_net_dev(text, "lo"), Some(0));
        assert_eq!(tx_drops_in_proc_net_dev(text, "flannel.2"), None);
        assert_eq!(
            tx_drops_in_proc_net_dev("flannel.1: 1 2 3", "flannel.1"),
            None
        );
        assert_eq!(tx_drops_in_proc_net_dev("", "flannel.1"), None);
    }

    #[test]
    fn snapshot_sums_workers() {
        let counters = Counters::new(2);
        let mut t = Tally {
            encap_frames: 3,
            ..Tally::default()
        };
        t.drop(DropReason::WrongVni);
        counters.worker(0).add(&t);
        counters.worker(1).add(&t);
        let s = counters.snapshot();
        assert_eq!(s.frames.encap_frames, 6);
        assert_eq!(s.drop_count(DropReason::WrongVni), 2);
        assert_eq!(s.total_drops(), 2);
        let json = serde_json::to_value(s).unwrap();
        assert_eq!(json["drops"]["wrong_vni"], 2);
    }

    #[test]
    fn merge_adds_the_ipv6_dataplane_counts() {
        let v4 = Counters::new(1);
        let v6 = Counters::new(2);
        let mut t = Tally {
            encap_frames: 3,
            arp_replies: 1,
            ..Tally::default()
        };
        t.drop(DropReason::WrongVni);
        v4.worker(0).add(&t);
        let mut t6 = Tally {
            encap_frames: 5,
            ndp_replies: 2,
            ..Tally::default()
        };
        t6.drop(DropReason::NdpUnknownTarget);
        v6.worker(1).add(&t6);
        let mut s = v4.snapshot();
        s.merge(&v6.snapshot());
        assert_eq!(s.frames.encap_frames, 8);
        assert_eq!((s.frames.arp_replies, s.frames.ndp_replies), (1, 2));
        assert_eq!(s.drop_count(DropReason::WrongVni), 1);
        assert_eq!(s.drop_count(DropReason::NdpUnknownTarget), 1);
        assert_eq!(s.total_drops(), 2);
    }
}
