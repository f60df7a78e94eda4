//! Does AF_XDP on the underlay beat weft's UDP GSO/GRO sockets?
//!
//! weftd sends VXLAN datagrams with UDP GSO (44 datagrams of 1400 bytes of
//! payload in one `sendmsg` of one buffer) and receives them with UDP GRO.
//! This probe moves the same datagrams from namespace A to namespace B over
//! a veth pair, sender pinned to CPU 0 and receiver to CPU 1, in three modes
//! that alternate round by round:
//!
//! - `udp`: UDP GSO sender, UDP GRO receiver (weft today).
//! - `xdp-rx`: the same sender; B receives with an AF_XDP socket (copy
//!   mode) fed by a native XDP program on its veth that redirects every
//!   frame to it. Attaching the program turns off GSO on A's veth, so the
//!   sender's GSO buffer is cut in software before it crosses.
//! - `xdp-both`: A also sends with AF_XDP (copy mode): whole
//!   Ethernet/IPv4/UDP frames built once in its UMEM, 44 descriptors per
//!   batch, kicked with sendto(MSG_DONTWAIT) until the kernel has taken them
//!   all (it takes at most 32 per call in copy mode); "sent" counts the
//!   frames the completion ring hands back.
//!
//! Per mode it prints datagrams/s sent and received, Gbit/s of payload and
//! the machine's CPU time per GB of payload received, from /proc/stat (all
//! non-idle, non-iowait time of all CPUs: veth's softirq work is charged to
//! no process). Every received datagram's length and tag are checked and
//! every 64th's whole payload; a round fails if any is wrong or if more
//! arrive than were sent.
//!
//! Run as root by scripts/afxdp-probe.sh, which makes the namespaces.
//!
//! Usage: weft-afxdp-probe --ns-a NS --ns-b NS --dev-a IF --dev-b IF
//! --ip-a ADDR --ip-b ADDR [--rounds 5] [--seconds 2]
//! [--modes udp,xdp-rx,xdp-both]

mod sys;

use std::io;
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PORT: u16 = 4789;
const PAYLOAD: usize = 1400;
/// Datagrams per UDP GSO send and descriptors per AF_XDP batch.
const SEGMENTS: usize = 44;
const HEADERS: usize = 14 + 20 + 8;
const FRAME: usize = HEADERS + PAYLOAD;
const MAGIC: &[u8; 4] = b"weft";
/// Every how many received datagrams one is checked whole.
const SAMPLE: u64 = 64;
const XSK_FRAMES: u32 = 4096;
const XSK_FRAME_SIZE: u32 = 2048;
const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;
const WARMUP: Duration = Duration::from_millis(300);
const SOCKET_BUFFER: i32 = 4 << 20;
const XDP_COPY: u16 = 1 << 1;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Udp,
    XdpRx,
    XdpBoth,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Udp => "udp",
            Mode::XdpRx => "xdp-rx",
            Mode::XdpBoth => "xdp-both",
        }
    }
    fn parse(s: &str) -> io::Result<Mode> {
        match s {
            "udp" => Ok(Mode::Udp),
            "xdp-rx" => Ok(Mode::XdpRx),
            "xdp-both" => Ok(Mode::XdpBoth),
            _ => Err(invalid(format!(
                "unknown mode {s}: use udp, xdp-rx, xdp-both"
            ))),
        }
    }
}

struct Config {
    ns_a: String,
    ns_b: String,
    dev_a: String,
    dev_b: String,
    ip_a: Ipv4Addr,
    ip_b: Ipv4Addr,
    mac_a: [u8; 6],
    mac_b: [u8; 6],
    rounds: usize,
    seconds: f64,
    modes: Vec<Mode>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("weft-afxdp-probe: FAILED verification (see above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("weft-afxdp-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn parse_args() -> io::Result<Config> {
    let mut args = std::env::args().skip(1);
    let (mut ns_a, mut ns_b, mut dev_a, mut dev_b, mut ip_a, mut ip_b) =
        (None, None, None, None, None, None);
    let (mut rounds, mut seconds) = (5usize, 2f64);
    let mut modes = vec![Mode::Udp, Mode::XdpRx, Mode::XdpBoth];
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| invalid(format!("{flag} needs a value")))?;
        let number = |what: &str| invalid(format!("{flag}: not {what}: {value}"));
        match flag.as_str() {
            "--ns-a" => ns_a = Some(value),
            "--ns-b" => ns_b = Some(value),
            "--dev-a" => dev_a = Some(value),
            "--dev-b" => dev_b = Some(value),
            "--ip-a" => ip_a = Some(value.parse().map_err(|_| number("an IPv4 address"))?),
            "--ip-b" => ip_b = Some(value.parse().map_err(|_| number("an IPv4 address"))?),
            "--rounds" => rounds = value.parse().map_err(|_| number("a count"))?,
            "--seconds" => seconds = value.parse().map_err(|_| number("a number of seconds"))?,
            "--modes" => {
                modes = value
                    .split(',')
                    .map(Mode::parse)
                    .collect::<io::Result<_>>()?
            }
            _ => return Err(invalid(format!("unknown flag {flag}"))),
        }
    }
    let need = |v: Option<String>, flag: &str| {
        v.ok_or_else(|| {
            invalid(format!(
                "{flag} is required (scripts/afxdp-probe.sh passes it)"
            ))
        })
    };
    let ip_need = |v: Option<Ipv4Addr>, flag: &str| {
        v.ok_or_else(|| {
            invalid(format!(
                "{flag} is required (scripts/afxdp-probe.sh passes it)"
            ))
        })
    };
    if rounds == 0 || seconds <= 0.0 || modes.is_empty() {
        return Err(invalid(
            "rounds and seconds must be > 0 and at least one mode given".into(),
        ));
    }
    Ok(Config {
        ns_a: need(ns_a, "--ns-a")?,
        ns_b: need(ns_b, "--ns-b")?,
        dev_a: need(dev_a, "--dev-a")?,
        dev_b: need(dev_b, "--dev-b")?,
        ip_a: ip_need(ip_a, "--ip-a")?,
        ip_b: ip_need(ip_b, "--ip-b")?,
        mac_a: [0; 6],
        mac_b: [0; 6],
        rounds,
        seconds,
        modes,
    })
}

/// Runs `f` on a thread of its own inside namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            sys::enter_netns(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("helper thread panicked")))
    })
}

fn run() -> io::Result<bool> {
    let mut cfg = parse_args()?;
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    if online < 2 {
        return Err(io::Error::other(
            "needs 2 CPUs: the sender runs on CPU 0, the receiver on CPU 1",
        ));
    }
    cfg.mac_a = in_netns(&cfg.ns_a, || sys::mac_address(&cfg.dev_a))?;
    cfg.mac_b = in_netns(&cfg.ns_b, || sys::mac_address(&cfg.dev_b))?;
    println!(
        "weft-afxdp-probe: {} -> {} over veth {}/{}, {} B payloads to port {PORT}, {SEGMENTS} per \
         batch, sender CPU {SENDER_CPU}, receiver CPU {RECEIVER_CPU}, {} rounds x {} s per mode \
         ({} s warm-up each), {} CPUs online",
        cfg.ip_a,
        cfg.ip_b,
        cfg.dev_a,
        cfg.dev_b,
        PAYLOAD,
        cfg.rounds,
        cfg.seconds,
        WARMUP.as_secs_f64(),
        online
    );
    println!(
        "offloads before XDP: A {}: {}; B {}: {}",
        cfg.dev_a,
        offloads(&cfg.ns_a, &cfg.dev_a),
        cfg.dev_b,
        offloads(&cfg.ns_b, &cfg.dev_b)
    );

    let mut results: Vec<RoundResult> = Vec::new();
    let mut ok = true;
    let mut shown_offloads = false;
    for round in 0..cfg.rounds {
        for i in 0..cfg.modes.len() {
            // The order rotates each round, so that no mode always runs first.
            let mode = cfg.modes[(i + round) % cfg.modes.len()];
            let show = mode != Mode::Udp && !shown_offloads;
            shown_offloads |= show;
            let r = run_round(&cfg, mode, show)?;
            ok &= r.print(round);
            results.push(r);
        }
    }
    println!(
        "offloads after: A {}: {}; B {}: {}",
        cfg.dev_a,
        offloads(&cfg.ns_a, &cfg.dev_a),
        cfg.dev_b,
        offloads(&cfg.ns_b, &cfg.dev_b)
    );
    summary(&cfg, &results);
    Ok(ok)
}

/// The offload flags that matter here, from `ethtool -k`.
fn offloads(ns: &str, dev: &str) -> String {
    let out = match Command::new("ip")
        .args(["netns", "exec", ns, "ethtool", "-k", dev])
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => {
            return format!(
                "(ethtool -k failed: {})",
                String::from_utf8_lossy(&o.stderr).trim()
            );
        }
        Err(e) => return format!("(cannot run ethtool: {e}; install ethtool)"),
    };
    let wanted = [
        ("generic-segmentation-offload", "gso"),
        ("tx-udp-segmentation", "tx-udp-seg"),
        ("tx-tcp-segmentation", "tso"),
        ("generic-receive-offload", "gro"),
    ];
    let mut parts = Vec::new();
    for (key, short) in wanted {
        if let Some(line) = out
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{key}:")))
        {
            let value = line.split_once(':').map_or("", |(_, v)| v.trim());
            parts.push(format!("{short} {value}"));
        }
    }
    parts.join(", ")
}

// ---------------------------------------------------------------------------
// Payloads

/// Payload number `k`: the tag `weft`, `k`, then bytes that depend on both.
fn fill_payload(k: u32, out: &mut [u8]) {
    out[..4].copy_from_slice(MAGIC);
    out[4..8].copy_from_slice(&k.to_le_bytes());
    for (i, b) in out.iter_mut().enumerate().skip(8) {
        *b = pattern(k, i);
    }
}

fn pattern(k: u32, i: usize) -> u8 {
    ((k as usize)
        .wrapping_mul(131)
        .wrapping_add(i.wrapping_mul(7)) as u8)
        ^ 0xa5
}

/// The tag check every datagram gets; returns `k`.
fn quick_check(p: &[u8], kinds: u32) -> Result<u32, String> {
    if p.len() != PAYLOAD {
        return Err(format!("payload of {} bytes, {PAYLOAD} sent", p.len()));
    }
    if &p[..4] != MAGIC {
        return Err(format!("payload tag {:02x?}, not \"weft\"", &p[..4]));
    }
    let k = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
    if k >= kinds {
        return Err(format!("payload number {k}, only {kinds} were sent"));
    }
    Ok(k)
}

/// The whole payload, byte for byte.
fn full_check(p: &[u8], k: u32) -> Result<(), String> {
    match p
        .iter()
        .enumerate()
        .skip(8)
        .find(|&(i, &b)| b != pattern(k, i))
    {
        None => Ok(()),
        Some((i, b)) => Err(format!(
            "payload {k} byte {i} is {b:#04x}, {:#04x} was sent",
            pattern(k, i)
        )),
    }
}

fn checksum_add(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn checksum_fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// Sum of the UDP pseudo-header, header and payload of an IPv4 frame: 0xffff
/// when the checksum in it is right.
fn udp_sum(frame: &[u8]) -> u16 {
    let ip = &frame[14..34];
    let udp = &frame[34..];
    let mut sum = checksum_add(0, &ip[12..20]);
    sum += 17 + udp.len() as u32;
    checksum_fold(checksum_add(sum, udp))
}

/// Ethernet/IPv4/UDP frame `k` from A to B.
fn build_frame(cfg: &Config, k: u32, out: &mut [u8]) {
    let out = &mut out[..FRAME];
    out.fill(0);
    out[0..6].copy_from_slice(&cfg.mac_b);
    out[6..12].copy_from_slice(&cfg.mac_a);
    out[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut out[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((FRAME - 14) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&(k as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&cfg.ip_a.octets());
    ip[16..20].copy_from_slice(&cfg.ip_b.octets());
    let sum = !checksum_fold(checksum_add(0, ip));
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut out[34..42];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    fill_payload(k, &mut out[HEADERS..]);
    let sum = !udp_sum(out);
    let sum = if sum == 0 { 0xffff } else { sum };
    out[40..42].copy_from_slice(&sum.to_be_bytes());
}

// ---------------------------------------------------------------------------
// A round

#[derive(Default)]
struct Shared {
    sent: AtomicU64,
    received: AtomicU64,
    stop_sender: AtomicBool,
    stop_receiver: AtomicBool,
}

#[derive(Default, Debug)]
struct RxStats {
    datagrams: u64,
    /// Frames on the XSK that were not our datagrams (ARP, IPv6, ...).
    foreign: u64,
    bad: u64,
    first_bad: Option<String>,
    checked_whole: u64,
    /// Of the frames checked whole on an XSK: UDP checksum right, zero,
    /// wrong (e.g. left partial by a CHECKSUM_PARTIAL sender).
    csum_ok: u64,
    csum_zero: u64,
    csum_wrong: u64,
    receives: u64,
    xdp: Option<libc::xdp_statistics>,
}

impl RxStats {
    fn bad(&mut self, why: String) {
        self.bad += 1;
        if self.first_bad.is_none() {
            self.first_bad = Some(why);
        }
    }

    /// Checks one payload; `whole` when it is one of the sampled ones.
    fn payload(&mut self, p: &[u8], kinds: u32) -> bool {
        self.datagrams += 1;
        let k = match quick_check(p, kinds) {
            Ok(k) => k,
            Err(why) => {
                self.bad(why);
                return false;
            }
        };
        if self.datagrams % SAMPLE == 1 {
            self.checked_whole += 1;
            if let Err(why) = full_check(p, k) {
                self.bad(why);
                return false;
            }
            return true;
        }
        false
    }

    /// Checks one frame off an XSK.
    fn frame(&mut self, f: &[u8], cfg: &Config, kinds: u32) {
        let ours = f.len() >= HEADERS
            && f[12..14] == [0x08, 0x00]
            && f[14 + 9] == 17
            && f[30..34] == cfg.ip_b.octets()
            && f[36..38] == PORT.to_be_bytes();
        if !ours {
            self.foreign += 1;
            return;
        }
        if f.len() != FRAME || f[14] != 0x45 || f[38..40] != ((8 + PAYLOAD) as u16).to_be_bytes() {
            self.datagrams += 1;
            self.bad(format!(
                "frame of {} bytes (IHL/UDP length as sent?), {FRAME} sent",
                f.len()
            ));
            return;
        }
        if self.payload(&f[HEADERS..], kinds) {
            if f[40..42] == [0, 0] {
                self.csum_zero += 1;
            } else if udp_sum(f) == 0xffff {
                self.csum_ok += 1;
            } else {
                self.csum_wrong += 1;
            }
        }
    }
}

#[derive(Default, Debug)]
struct TxStats {
    batches: u64,
    kicks: u64,
    again: u64,
    refused: u64,
}

struct RoundResult {
    mode: Mode,
    secs: f64,
    sent: u64,
    received: u64,
    total_sent: u64,
    busy: Vec<u64>,
    softirq: u64,
    hz: u64,
    rx: RxStats,
    tx: TxStats,
}

impl RoundResult {
    fn gbit(&self) -> f64 {
        (self.received * PAYLOAD as u64 * 8) as f64 / self.secs / 1e9
    }
    /// Machine CPU seconds per GB of payload received.
    fn cpu_per_gb(&self) -> f64 {
        let busy: u64 = self.busy.iter().sum();
        let gb = (self.received * PAYLOAD as u64) as f64 / 1e9;
        if gb == 0.0 {
            f64::INFINITY
        } else {
            busy as f64 / self.hz as f64 / gb
        }
    }
    fn cpu_pct(&self) -> Vec<f64> {
        self.busy
            .iter()
            .map(|&j| 100.0 * j as f64 / self.hz as f64 / self.secs)
            .collect()
    }

    /// Prints the round; false if its verification failed.
    fn print(&self, round: usize) -> bool {
        let pct = self.cpu_pct();
        let cpus = pct
            .iter()
            .enumerate()
            .map(|(i, p)| format!("cpu{i} {p:.0}%"))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "round {round} {:<8} sent {:>9.0}/s recv {:>9.0}/s ({:>5.1}%) {:>6.2} Gbit/s  machine CPU \
             {:.3} s/GB [{cpus}, softirq {:.0}%]",
            self.mode.name(),
            self.sent as f64 / self.secs,
            self.received as f64 / self.secs,
            100.0 * self.received as f64 / self.sent.max(1) as f64,
            self.gbit(),
            self.cpu_per_gb(),
            100.0 * self.softirq as f64 / self.hz as f64 / self.secs,
        );
        let rx = &self.rx;
        let mut detail = format!(
            "    checked {} datagrams ({} whole), {} bad",
            rx.datagrams, rx.checked_whole, rx.bad
        );
        if rx.foreign > 0 {
            detail += &format!(", {} foreign frames", rx.foreign);
        }
        if self.mode != Mode::Udp {
            detail += &format!(
                "; UDP checksum of whole-checked: {} right, {} zero, {} not final",
                rx.csum_ok, rx.csum_zero, rx.csum_wrong
            );
        }
        if let Some(x) = &rx.xdp {
            detail += &format!(
                "; XSK rx_dropped {} rx_ring_full {} fill_ring_empty {}",
                x.rx_dropped, x.rx_ring_full, x.rx_fill_ring_empty_descs
            );
        }
        detail += &format!(
            "; {:.1} datagrams per receive wake-up",
            rx.datagrams as f64 / rx.receives.max(1) as f64
        );
        if self.mode == Mode::XdpBoth {
            detail += &format!(
                "; TX {} batches, {:.2} kicks/batch ({} EAGAIN/EBUSY)",
                self.tx.batches,
                self.tx.kicks as f64 / self.tx.batches.max(1) as f64,
                self.tx.again
            );
        }
        if self.tx.refused > 0 {
            detail += &format!("; {} sends refused (ICMP)", self.tx.refused);
        }
        println!("{detail}");
        let mut ok = true;
        if let Some(why) = &rx.first_bad {
            println!("    FAIL: {} bad datagrams, first: {why}", rx.bad);
            ok = false;
        }
        if rx.datagrams > self.total_sent {
            println!(
                "    FAIL: received {} datagrams, only {} were sent",
                rx.datagrams, self.total_sent
            );
            ok = false;
        }
        if rx.datagrams == 0 {
            println!("    FAIL: nothing received");
            ok = false;
        }
        ok
    }
}

/// /proc/stat per CPU: (busy, softirq) jiffies; busy is all but idle and
/// iowait.
fn cpu_stat() -> io::Result<Vec<(u64, u64)>> {
    let text = std::fs::read_to_string("/proc/stat")?;
    let mut cpus = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some(name) if name.starts_with("cpu") && name.len() > 3 => {}
            _ => continue,
        }
        let v: Vec<u64> = fields.map(|f| f.parse().unwrap_or(0)).collect();
        if v.len() < 8 {
            return Err(io::Error::other("/proc/stat: short cpu line"));
        }
        // user nice system idle iowait irq softirq steal (guest is in user)
        cpus.push((v[0] + v[1] + v[2] + v[5] + v[6] + v[7], v[6]));
    }
    Ok(cpus)
}

fn run_round(cfg: &Config, mode: Mode, show_offloads: bool) -> io::Result<RoundResult> {
    let shared = Shared::default();
    std::thread::scope(|s| {
        let (ready_tx, ready) = mpsc::channel::<io::Result<()>>();
        let ready_rx = ready_tx.clone();
        let receiver = s.spawn(|| receive(cfg, mode, &shared, ready_rx));
        let stop_all = |shared: &Shared| {
            shared.stop_sender.store(true, Ordering::Relaxed);
            shared.stop_receiver.store(true, Ordering::Relaxed);
        };
        let wait = |what: &str| -> io::Result<()> {
            match ready.recv_timeout(Duration::from_secs(10)) {
                Ok(r) => r,
                Err(_) => Err(io::Error::other(format!(
                    "{what} did not get ready in 10 s"
                ))),
            }
        };
        if let Err(e) = wait("receiver") {
            stop_all(&shared);
            let _ = receiver.join();
            return Err(io::Error::new(
                e.kind(),
                format!("{} receiver: {e}", mode.name()),
            ));
        }
        if show_offloads {
            println!(
                "offloads with XDP on B: A {}: {}; B {}: {}",
                cfg.dev_a,
                offloads(&cfg.ns_a, &cfg.dev_a),
                cfg.dev_b,
                offloads(&cfg.ns_b, &cfg.dev_b)
            );
        }
        let sender = s.spawn(|| send(cfg, mode, &shared, ready_tx));
        if let Err(e) = wait("sender") {
            stop_all(&shared);
            let _ = sender.join();
            let _ = receiver.join();
            return Err(io::Error::new(
                e.kind(),
                format!("{} sender: {e}", mode.name()),
            ));
        }
        std::thread::sleep(WARMUP);
        let (stat0, t0) = (cpu_stat(), Instant::now());
        let (sent0, recv0) = (
            shared.sent.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        );
        std::thread::sleep(Duration::from_secs_f64(cfg.seconds));
        let (sent1, recv1) = (
            shared.sent.load(Ordering::Relaxed),
            shared.received.load(Ordering::Relaxed),
        );
        let (stat1, secs) = (cpu_stat(), t0.elapsed().as_secs_f64());
        shared.stop_sender.store(true, Ordering::Relaxed);
        let tx = sender
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("sender thread panicked")));
        // Let the receiver drain what is in flight.
        std::thread::sleep(Duration::from_millis(100));
        shared.stop_receiver.store(true, Ordering::Relaxed);
        let rx = receiver
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("receiver thread panicked")));
        let (tx, rx) = (tx?, rx?);
        let (stat0, stat1) = (stat0?, stat1?);
        Ok(RoundResult {
            mode,
            secs,
            sent: sent1 - sent0,
            received: recv1 - recv0,
            total_sent: shared.sent.load(Ordering::Relaxed),
            busy: stat1.iter().zip(&stat0).map(|(b, a)| b.0 - a.0).collect(),
            softirq: stat1.iter().zip(&stat0).map(|(b, a)| b.1 - a.1).sum(),
            hz: sys::clock_ticks(),
            rx,
            tx,
        })
    })
}

fn send(
    cfg: &Config,
    mode: Mode,
    shared: &Shared,
    ready: mpsc::Sender<io::Result<()>>,
) -> io::Result<TxStats> {
    let setup = || -> io::Result<()> {
        sys::enter_netns(&cfg.ns_a)?;
        sys::pin(SENDER_CPU)
    };
    if let Err(e) = setup() {
        let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
        return Err(e);
    }
    match mode {
        Mode::Udp | Mode::XdpRx => send_gso(cfg, shared, ready),
        Mode::XdpBoth => send_xsk(cfg, shared, ready),
    }
}

/// Reports a setup result on `ready` and passes it on.
fn report<T>(ready: &mpsc::Sender<io::Result<()>>, r: io::Result<T>) -> io::Result<T> {
    match r {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            Ok(v)
        }
        Err(e) => {
            let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
            Err(e)
        }
    }
}

fn send_gso(
    cfg: &Config,
    shared: &Shared,
    ready: mpsc::Sender<io::Result<()>>,
) -> io::Result<TxStats> {
    let setup = || -> io::Result<UdpSocket> {
        let sock = UdpSocket::bind((cfg.ip_a, 0))?;
        sock.connect((cfg.ip_b, PORT))?;
        sys::set_int(
            sock.as_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            PAYLOAD as i32,
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("setsockopt UDP_SEGMENT (kernel 4.18+): {e}"),
            )
        })?;
        sys::set_int(
            sock.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDBUFFORCE,
            SOCKET_BUFFER,
        )?;
        Ok(sock)
    };
    let sock = report(&ready, setup())?;
    let mut buf = vec![0u8; SEGMENTS * PAYLOAD];
    for (k, seg) in buf.chunks_exact_mut(PAYLOAD).enumerate() {
        fill_payload(k as u32, seg);
    }
    let mut st = TxStats::default();
    while !shared.stop_sender.load(Ordering::Relaxed) {
        match sock.send(&buf) {
            Ok(n) if n == buf.len() => {
                st.batches += 1;
                shared.sent.fetch_add(SEGMENTS as u64, Ordering::Relaxed);
            }
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "UDP GSO send took {n} of {} bytes",
                    buf.len()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => st.refused += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => st.again += 1,
            Err(e) => return Err(io::Error::new(e.kind(), format!("UDP GSO send: {e}"))),
        }
    }
    Ok(st)
}

fn send_xsk(
    cfg: &Config,
    shared: &Shared,
    ready: mpsc::Sender<io::Result<()>>,
) -> io::Result<TxStats> {
    let setup = || -> io::Result<sys::Xsk> {
        let ifindex = sys::ifindex(&cfg.dev_a)?;
        let mut xsk = sys::Xsk::new(&sys::XskConfig {
            frames: XSK_FRAMES,
            frame_size: XSK_FRAME_SIZE,
            // The kernel wants a fill ring even on a socket that only sends.
            fill: 64,
            completion: XSK_FRAMES,
            rx: 0,
            tx: 2048,
        })?;
        for k in 0..XSK_FRAMES {
            build_frame(cfg, k, xsk.frame_mut(k)?);
        }
        bind(&mut xsk, ifindex)?;
        Ok(xsk)
    };
    let mut xsk = report(&ready, setup())?;
    let mut st = TxStats::default();
    while !shared.stop_sender.load(Ordering::Relaxed) {
        let done = xsk.complete();
        if done > 0 {
            shared.sent.fetch_add(u64::from(done), Ordering::Relaxed);
        }
        if xsk.tx_pending() == 0 && xsk.tx_free() >= SEGMENTS {
            xsk.transmit(SEGMENTS as u32, FRAME as u32);
            st.batches += 1;
        }
        if xsk.tx_pending() > 0 {
            st.kicks += 1;
            if let sys::Kick::Again = xsk.kick()? {
                st.again += 1;
            }
        } else {
            std::hint::spin_loop();
        }
    }
    // What was sent before the stop and completes now still counts as sent
    // (for received <= sent), not in the measured interval.
    let deadline = Instant::now() + Duration::from_millis(50);
    while Instant::now() < deadline {
        let done = xsk.complete();
        shared.sent.fetch_add(u64::from(done), Ordering::Relaxed);
        if xsk.tx_pending() > 0 {
            let _ = xsk.kick()?;
        }
    }
    Ok(st)
}

/// Binds to queue 0 in copy mode. The kernel releases a closed socket's
/// hold on the queue from a work queue, after close has returned: the
/// previous round's socket may still hold it for a moment (EBUSY).
fn bind(xsk: &mut sys::Xsk, ifindex: u32) -> io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match xsk.bind(ifindex, 0, XDP_COPY) {
            Err(e) if e.kind() == io::ErrorKind::ResourceBusy && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

fn receive(
    cfg: &Config,
    mode: Mode,
    shared: &Shared,
    ready: mpsc::Sender<io::Result<()>>,
) -> io::Result<RxStats> {
    let setup = || -> io::Result<()> {
        sys::enter_netns(&cfg.ns_b)?;
        sys::pin(RECEIVER_CPU)
    };
    if let Err(e) = setup() {
        let _ = ready.send(Err(io::Error::new(e.kind(), e.to_string())));
        return Err(e);
    }
    match mode {
        Mode::Udp => receive_gro(cfg, shared, ready),
        Mode::XdpRx | Mode::XdpBoth => receive_xsk(cfg, mode, shared, ready),
    }
}

fn receive_gro(
    cfg: &Config,
    shared: &Shared,
    ready: mpsc::Sender<io::Result<()>>,
) -> io::Result<RxStats> {
    let setup = || -> io::Result<UdpSocket> {
        let sock = UdpSocket::bind((cfg.ip_b, PORT))
            .map_err(|e| io::Error::new(e.kind(), format!("bind {}:{PORT}: {e}", cfg.ip_b)))?;
        sys::set_int(sock.as_fd(), libc::SOL_UDP, libc::UDP_GRO, 1).map_err(|e| {
            io::Error::new(e.kind(), format!("setsockopt UDP_GRO (kernel 5.0+): {e}"))
        })?;
        sys::set_int(
            sock.as_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            SOCKET_BUFFER,
        )?;
        sock.set_read_timeout(Some(Duration::from_millis(50)))?;
        Ok(sock)
    };
    let sock = report(&ready, setup())?;
    let mut buf = vec![0u8; 65536];
    let mut st = RxStats::default();
    loop {
        match sock.recv(&mut buf) {
            Ok(n) => {
                st.receives += 1;
                if n % PAYLOAD != 0 {
                    st.datagrams += 1;
                    st.bad(format!(
                        "GRO read of {n} bytes, not a multiple of {PAYLOAD}"
                    ));
                    shared.received.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                for p in buf[..n].chunks_exact(PAYLOAD) {
                    st.payload(p, SEGMENTS as u32);
                }
                shared
                    .received
                    .fetch_add((n / PAYLOAD) as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shared.stop_receiver.load(Ordering::Relaxed) {
                    break;
                }
            }
            Err(e) => return Err(io::Error::new(e.kind(), format!("UDP GRO recv: {e}"))),
        }
    }
    Ok(st)
}

fn receive_xsk(
    cfg: &Config,
    mode: Mode,
    shared: &Shared,
    ready: mpsc::Sender<io::Result<()>>,
) -> io::Result<RxStats> {
    // Declared in this order so that they drop in reverse: the link (which
    // detaches the program) first, the socket last.
    let setup = || -> io::Result<_> {
        let ifindex = sys::ifindex(&cfg.dev_b)?;
        let mut xsk = sys::Xsk::new(&sys::XskConfig {
            frames: XSK_FRAMES,
            frame_size: XSK_FRAME_SIZE,
            // Twice the frames: the kernel frees fill slots lazily.
            fill: 2 * XSK_FRAMES,
            // The kernel wants a completion ring even on a socket that only
            // receives.
            completion: 64,
            rx: XSK_FRAMES,
            tx: 0,
        })?;
        bind(&mut xsk, ifindex)?;
        let map = sys::create_xskmap(1)?;
        sys::map_update(map.as_fd(), 0, xsk.fd().as_raw_fd() as u32)?;
        let prog = sys::load_xdp_redirect(map.as_fd())?;
        let link = sys::xdp_link(prog.as_fd(), ifindex, sys::XDP_FLAGS_DRV_MODE)?;
        Ok((xsk, map, prog, link))
    };
    let (mut xsk, _map, _prog, link) = report(&ready, setup())?;
    let kinds = match mode {
        Mode::XdpBoth => XSK_FRAMES,
        _ => SEGMENTS as u32,
    };
    let mut st = RxStats::default();
    loop {
        let before = st.datagrams;
        let n = xsk.receive(|f| st.frame(f, cfg, kinds))?;
        if n > 0 {
            st.receives += 1;
            shared
                .received
                .fetch_add(st.datagrams - before, Ordering::Relaxed);
            continue;
        }
        if shared.stop_receiver.load(Ordering::Relaxed) {
            break;
        }
        sys::poll(xsk.fd(), libc::POLLIN, 50)?;
    }
    st.xdp = Some(xsk.statistics()?);
    drop(link);
    Ok(st)
}

// ---------------------------------------------------------------------------
// Summary

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn summary(cfg: &Config, results: &[RoundResult]) {
    println!(
        "\nmedians over {} rounds (machine CPU = all CPUs' non-idle time from /proc/stat, per GB of payload received):",
        cfg.rounds
    );
    println!(
        "{:<9} {:>12} {:>12} {:>9} {:>10} {:>9} {:>8}",
        "mode", "sent/s", "recv/s", "Gbit/s", "CPU s/GB", "vs udp", "loss"
    );
    let base = median(
        results
            .iter()
            .filter(|r| r.mode == Mode::Udp)
            .map(RoundResult::cpu_per_gb)
            .collect(),
    );
    for &mode in &cfg.modes {
        let rs: Vec<&RoundResult> = results.iter().filter(|r| r.mode == mode).collect();
        let m = |f: &dyn Fn(&RoundResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
        let cpu = m(&|r| r.cpu_per_gb());
        println!(
            "{:<9} {:>12.0} {:>12.0} {:>9.2} {:>10.3} {:>8.2}x {:>7.1}%",
            mode.name(),
            m(&|r| r.sent as f64 / r.secs),
            m(&|r| r.received as f64 / r.secs),
            m(&|r| r.gbit()),
            cpu,
            cpu / base,
            // Over an interval, a few datagrams sent before it may arrive
            // in it: clamp at 0 (each round's totals are checked above).
            m(&|r| (100.0 * (1.0 - r.received as f64 / r.sent.max(1) as f64)).max(0.0)),
        );
    }
}
