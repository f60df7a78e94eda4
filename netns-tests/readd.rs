//! A peer that leaves and comes back (node reboot, lease expiry and renewal)
//! is reachable again at once: 200 rounds of deleting a peer's lease and
//! writing it again, on etcd and on the embedded directory store, with
//! traffic to the peer all along (issue #19).
//!
//! The peer is a node programmed as flannel's kernel VXLAN backend, so only
//! weft's side reacts to the lease. A prober in the weft node sends an ICMP
//! echo request to the peer's gateway address (`S.0`) every millisecond, from
//! a raw socket; the replies come back through the overlay too (the source
//! address is weft's VTEP address once the route exists). A round's latency
//! is from the moment the store holds the lease again (etcd confirmed the
//! put; the file was renamed into place) to the first reply to a request
//! sent after the write was issued; the store's own time (etcd's commit,
//! which waits for a disk sync and can take long on a busy machine) is
//! reported beside it. Most rounds re-add the lease once weftd has removed
//! the route; every fourth re-adds it at once, while the removal may still be
//! under way.

use crate::etcd::{CONFIG_KEY, EtcdServer, etcd_opts, lease_key, own_mac, with_timed_writer};
use crate::harness::*;
use ipnet::Ipv4Net;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ROUNDS: usize = 200;
/// Every round must be answered within this long after the store holds the lease again.
const BOUND: Duration = Duration::from_secs(1);

#[test]
fn a_lease_deleted_and_written_again_200_times_on_etcd_is_reachable_within_1s_each_time() {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let etcd = EtcdServer::start(&lab);
    etcd.put(CONFIG_KEY, DEFAULT_NET_CONF);
    lab.start_weftd_with(0, etcd_opts(&[]));
    let weft = lab.wait_ready(0);
    let kernel = kernel_peer(&lab, weft);
    let key = lease_key(kernel.subnet);
    let value = kernel.lease_json(lab.nodes[1].ip);
    let underlay = lab.underlay.clone();
    with_timed_writer(&underlay, |write| {
        repeat_delete_and_readd(
            &lab,
            &kernel,
            "etcd",
            || write(&key, Some(&value)),
            || {
                write(&key, None);
            },
        );
    });
}

#[test]
fn a_lease_deleted_and_written_again_200_times_in_the_directory_store_is_reachable_within_1s_each_time()
 {
    if skip_without_root() {
        return;
    }
    let mut lab = Lab::new(2);
    let weft = lab.start_weftd(0);
    let kernel = kernel_peer(&lab, weft);
    let dir = lab.store_dir();
    let file = dir.join(format!(
        "{}-{}",
        kernel.subnet.network(),
        kernel.subnet.prefix_len()
    ));
    let tmp = dir.join(".tmp-readd-test");
    let value = kernel.lease_json(lab.nodes[1].ip);
    repeat_delete_and_readd(
        &lab,
        &kernel,
        "directory store",
        || {
            // As weftd writes a lease: a temporary file renamed into place.
            std::fs::write(&tmp, &value).unwrap();
            let issued = Instant::now();
            std::fs::rename(&tmp, &file).unwrap();
            (issued, Instant::now())
        },
        || std::fs::remove_file(&file).unwrap(),
    );
}

/// A flannel-style kernel VTEP on node 1 that knows weft's node 0, on a subnet
/// other than weft's.
fn kernel_peer(lab: &Lab, weft: Ipv4Net) -> KernelVtep {
    let subnet: Ipv4Net = if weft.network() == Ipv4Addr::new(10, 244, 200, 0) {
        "10.244.201.0/24".parse().unwrap()
    } else {
        "10.244.200.0/24".parse().unwrap()
    };
    let kernel = KernelVtep {
        vni: 1,
        port: 4789,
        subnet,
        mac: "0e:fa:00:00:00:01".into(),
    };
    let ns1 = lab.ns(1).to_owned();
    kernel.create(lab, &ns1, lab.nodes[1].ip);
    kernel.add_peer(lab, &ns1, weft, lab.nodes[0].ip, &own_mac(lab, 0));
    kernel
}

/// Runs the rounds with `add` (returns when the write was issued and when
/// the store confirmed it) and `delete`, asserting each round's bound, then
/// prints the distribution.
fn repeat_delete_and_readd(
    lab: &Lab,
    kernel: &KernelVtep,
    store: &str,
    add: impl Fn() -> (Instant, Instant),
    delete: impl Fn(),
) {
    let gateway = kernel.subnet.network();
    let prober = Prober::start(lab.ns(0), gateway);
    let (first, _) = add();
    prober
        .first_reply_after(first, first + Duration::from_secs(10))
        .unwrap_or_else(|| panic!("{store}: the peer was never reachable: {}", prober.errors()));
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(ROUNDS);
    let mut writes = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        delete();
        let racing = round % 4 == 3;
        if !racing {
            wait_for(
                "weftd to remove the peer's route",
                Duration::from_secs(5),
                || (!has_vtep_route(lab, kernel.subnet)).then_some(()),
            );
        }
        let (issued, stored) = add();
        writes.push(stored - issued);
        match prober.first_reply_after(issued, stored + BOUND) {
            Some(at) => latencies.push(at.saturating_duration_since(stored)),
            None => panic!(
                "{store}, round {round}{}: no reply from {gateway} within {BOUND:?} of the store holding the lease again\n\
                 prober: {}\nroutes: {:?}\nneighbours: {}\nweftd status: {}",
                if racing { " (re-added at once)" } else { "" },
                prober.errors(),
                lab.vtep_routes(0),
                lab.run(lab.ns(0), &["ip", "neigh", "show", "dev", "flannel.1"])
                    .trim(),
                lab.status(0)["counters"]
            ),
        }
    }
    let took = started.elapsed();
    latencies.sort();
    writes.sort();
    let ms = |d: Duration| (d.as_secs_f64() * 10_000.0).round() / 10.0;
    let at = |q: f64| ms(latencies[((latencies.len() - 1) as f64 * q).round() as usize]);
    let buckets = [2, 5, 10, 20, 50, 100, 200, 500, 1000];
    let mut histogram = Vec::new();
    let mut below = 0;
    for upper in buckets {
        let n = latencies
            .iter()
            .filter(|d| d.as_millis() < upper && d.as_millis() >= below)
            .count();
        histogram.push(format!("[{below},{upper}) ms: {n}"));
        below = upper;
    }
    println!(
        "{store}: lease in the store again -> first reply, {ROUNDS} rounds in {:.1} s: min {} / p50 {} / p90 {} / p99 {} / max {} ms; {}; the write itself: p50 {} / max {} ms",
        took.as_secs_f64(),
        at(0.0),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0),
        histogram.join(", "),
        ms(writes[writes.len() / 2]),
        ms(writes[writes.len() - 1])
    );
}

fn has_vtep_route(lab: &Lab, subnet: Ipv4Net) -> bool {
    let prefix = format!("{subnet} via {}", subnet.network());
    lab.vtep_routes(0).iter().any(|r| r.starts_with(&prefix))
}

/// What the prober has seen.
#[derive(Debug, Default)]
struct ProbeLog {
    /// When each request was sent, by sequence number (wraps at 65536).
    sent: Vec<Option<Instant>>,
    /// Replies: (when the request was sent, when the reply arrived).
    replies: Vec<(Instant, Instant)>,
    /// ICMP errors about our requests, and socket errors, with when.
    errors: Vec<(Instant, String)>,
}

/// Pings `target` every millisecond from a raw ICMP socket in a namespace,
/// until dropped (also when the test fails).
struct Prober {
    log: Arc<Mutex<ProbeLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    started: Instant,
}

impl Prober {
    fn start(ns: &str, target: Ipv4Addr) -> Prober {
        let log = Arc::new(Mutex::new(ProbeLog {
            sent: vec![None; 1 << 16],
            ..ProbeLog::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{ns}");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                let netns = std::fs::File::open(&path).expect("node netns");
                nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let socket = socket2::Socket::new(
                    socket2::Domain::IPV4,
                    socket2::Type::RAW,
                    Some(socket2::Protocol::ICMPV4),
                )
                .expect("raw ICMP socket");
                socket
                    .set_read_timeout(Some(Duration::from_micros(200)))
                    .expect("timeout");
                ready_tx.send(()).expect("test alive");
                probe(&socket, target, &log, &stop);
            })
        };
        ready_rx.recv().expect("prober started");
        Prober {
            log,
            stop,
            thread: Some(thread),
            started: Instant::now(),
        }
    }

    /// When the first reply to a request sent at or after `since` arrived,
    /// waiting until `deadline` at most.
    fn first_reply_after(&self, since: Instant, deadline: Instant) -> Option<Instant> {
        loop {
            let found = self
                .log
                .lock()
                .expect("log")
                .replies
                .iter()
                .filter(|(sent, _)| *sent >= since)
                .map(|(_, got)| *got)
                .min();
            if found.is_some() {
                return found;
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// The last errors the prober saw, for a failure message.
    fn errors(&self) -> String {
        let log = self.log.lock().expect("log");
        let last: Vec<_> = log
            .errors
            .iter()
            .rev()
            .take(5)
            .map(|(at, e)| format!("{e} at {:?}", *at - self.started))
            .collect();
        format!(
            "{} replies, {} errors{}{}",
            log.replies.len(),
            log.errors.len(),
            if last.is_empty() { "" } else { "; last: " },
            last.join("; ")
        )
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn probe(socket: &socket2::Socket, target: Ipv4Addr, log: &Mutex<ProbeLog>, stop: &AtomicBool) {
    let ident = (std::process::id() as u16) ^ 0x5eed;
    let to = socket2::SockAddr::from(SocketAddrV4::new(target, 0));
    let mut seq: u16 = 0;
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let mut request = [8u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        request[4..6].copy_from_slice(&ident.to_be_bytes());
        request[6..8].copy_from_slice(&seq.to_be_bytes());
        let sum = checksum(&request);
        request[2..4].copy_from_slice(&sum.to_be_bytes());
        let sent = Instant::now();
        log.lock().expect("log").sent[usize::from(seq)] = Some(sent);
        if let Err(e) = socket.send_to(&request, &to) {
            // No route yet is not an error here: the request is simply lost.
            if e.raw_os_error() != Some(libc::ENETUNREACH) {
                log.lock()
                    .expect("log")
                    .errors
                    .push((sent, format!("send: {e}")));
            }
        }
        seq = seq.wrapping_add(1);
        // Read until the next request is due.
        while sent.elapsed() < Duration::from_millis(1) {
            if let Ok(n) = std::io::Read::read(&mut &*socket, &mut buf) {
                record(&buf[..n], target, ident, log);
            }
        }
    }
}

/// Records an echo reply from `target` to our requests, or an ICMP error
/// about one of them.
fn record(packet: &[u8], target: Ipv4Addr, ident: u16, log: &Mutex<ProbeLog>) {
    let arrived = Instant::now();
    let Some(ihl) = packet.first().map(|b| usize::from(b & 0x0f) * 4) else {
        return;
    };
    let (Some(src), Some(icmp)) = (packet.get(12..16), packet.get(ihl..)) else {
        return;
    };
    let src = Ipv4Addr::new(src[0], src[1], src[2], src[3]);
    match icmp {
        [0, 0, _, _, id0, id1, s0, s1, ..]
            if src == target && u16::from_be_bytes([*id0, *id1]) == ident =>
        {
            let seq = u16::from_be_bytes([*s0, *s1]);
            let mut log = log.lock().expect("log");
            if let Some(sent) = log.sent[usize::from(seq)] {
                log.replies.push((sent, arrived));
            }
        }
        // An error quoting one of our requests: IP header, then our ICMP header.
        [kind @ (3 | 11 | 12), code, _, _, _, _, _, _, quoted @ ..] => {
            let Some(qihl) = quoted.first().map(|b| usize::from(b & 0x0f) * 4) else {
                return;
            };
            if let Some([8, 0, _, _, id0, id1, ..]) = quoted.get(qihl..)
                && u16::from_be_bytes([*id0, *id1]) == ident
            {
                log.lock()
                    .expect("log")
                    .errors
                    .push((arrived, format!("ICMP type {kind} code {code} from {src}")));
            }
        }
        _ => {}
    }
}

/// The Internet checksum of `data` (even length).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
