//! Does io_uring cut the per-frame cost of weft's TAP I/O?
//!
//! weft's TX thread reads its TAP queue with one `read` per frame (a TAP
//! has no `recvmmsg`), and its RX thread writes a frame that cannot be
//! coalesced with one `writev`. On 64 KiB super-frames that is a syscall per
//! 64 KiB, on small packets one per packet. This probe measures what a frame
//! costs the process (its threads and any io_uring workers) when read from
//! or written to a TAP either way, with the frames already queued, so that
//! wake-ups are left out and only the per-frame work is compared:
//!
//! - `read`: `read(2)` until all queued frames are in, as weft does.
//! - `uring`: `IORING_OP_READ`, `depth` reads in flight, each re-armed as it
//!   completes; `uring-fixed` the same on registered buffers (`READ_FIXED`).
//! - `multishot`: one `IORING_OP_READ_MULTISHOT` into a provided-buffer ring.
//! - `write` / `uring-write`: `write(2)` per frame against `depth` writes per
//!   `io_uring_enter`.
//!
//! Run inside a fresh network namespace as root (scripts/uring-probe.sh does
//! that): it creates TAP `urp0`, addresses it, and makes the kernel queue
//! UDP datagrams on it with a permanent neighbour entry for a peer that
//! does not exist.
//!
//! Usage: weft-uring-probe [frames per round] [rounds] [depth] [payload bytes]

mod sys;

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

const TAP: &str = "urp0";
const OURS: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const PEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SINK_PORT: u16 = 9999;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Read,
    Uring,
    UringFixed,
    Multishot,
    Write,
    UringWrite,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Read,
        Mode::Uring,
        Mode::UringFixed,
        Mode::Multishot,
        Mode::Write,
        Mode::UringWrite,
    ];

    fn name(self) -> &'static str {
        match self {
            Mode::Read => "read",
            Mode::Uring => "uring",
            Mode::UringFixed => "uring-fixed",
            Mode::Multishot => "multishot",
            Mode::Write => "write",
            Mode::UringWrite => "uring-write",
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Tally {
    frames: u64,
    cpu: Duration,
    wall: Duration,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-uring-probe: {e}");
            ExitCode::FAILURE
        }
    }
}

fn arg(n: usize, default: usize) -> io::Result<usize> {
    match std::env::args().nth(n) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("argument {n}: not a count: {s}"),
            )
        }),
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn run() -> io::Result<()> {
    let per_round = arg(1, 4096)?;
    let rounds = arg(2, 50)?;
    let depth = arg(3, 64)?;
    let payload = arg(4, 64)?;
    if per_round == 0 || rounds == 0 || depth == 0 || payload > 1400 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frames, rounds and depth must be > 0, payload at most 1400 bytes",
        ));
    }

    let mut tap = sys::open_tap(TAP).map_err(|e| {
        io::Error::other(format!(
            "cannot create TAP {TAP} (run as root, in a fresh netns): {e}"
        ))
    })?;
    // The TAP's own ring must hold a whole round.
    let qlen = (per_round * 2).to_string();
    ip(&["link", "set", TAP, "up", "txqueuelen", &qlen])?;
    ip(&["addr", "add", &format!("{OURS}/24"), "dev", TAP])?;
    let peer_mac = PEER_MAC.map(|b| format!("{b:02x}")).join(":");
    ip(&[
        "neigh",
        "replace",
        &PEER.to_string(),
        "lladdr",
        &peer_mac,
        "dev",
        TAP,
        "nud",
        "permanent",
    ])?;
    let our_mac = std::fs::read_to_string(format!("/sys/class/net/{TAP}/address"))?;
    let our_mac = parse_mac(our_mac.trim())?;

    // Frames the kernel queues on the TAP: datagrams to the absent peer.
    let source = UdpSocket::bind((OURS, 0))?;
    source.connect((PEER, 9))?;
    // Frames written to the TAP: datagrams from the peer to a socket that is
    // never read, so that once its buffer is full each costs the same.
    let sink = UdpSocket::bind((OURS, SINK_PORT))?;
    let inbound = frame(&our_mac, payload);
    let mut ring = sys::Ring::new(depth, 2048)?;
    check_writes(&mut tap, &sink, &mut ring, &inbound)?;

    sys::pin(0)?;
    let mut reads = vec![0u8; 2048];
    let message = vec![0x5au8; payload];
    let mut tally = [Tally::default(); Mode::ALL.len()];
    let total = per_round;

    // One warm-up round of each mode, not counted, then the rounds, the modes
    // alternating inside each so that the machine's drift spreads over all.
    for round in 0..=rounds {
        for (m, mode) in Mode::ALL.iter().enumerate() {
            let queued = matches!(
                mode,
                Mode::Read | Mode::Uring | Mode::UringFixed | Mode::Multishot
            );
            if queued {
                for _ in 0..total {
                    source.send(&message)?;
                }
            }
            let (cpu0, t0) = (sys::process_cpu(), Instant::now());
            match mode {
                Mode::Read => {
                    let mut n = 0;
                    while n < total {
                        match tap.read(&mut reads) {
                            Ok(_) => n += 1,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                                return Err(io::Error::other(format!(
                                    "read: the TAP queue held {n} frames, {total} were sent \
                                     (raise txqueuelen?)"
                                )));
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
                Mode::Uring | Mode::UringFixed => {
                    ring.read(tap.as_raw_fd(), total, *mode == Mode::UringFixed)?;
                }
                Mode::Multishot => {
                    ring.read_multishot(tap.as_raw_fd(), total)?;
                }
                Mode::Write => {
                    for _ in 0..total {
                        tap.write_all(&inbound)?;
                    }
                }
                Mode::UringWrite => ring.write(tap.as_raw_fd(), &inbound, total)?,
            }
            let (cpu, wall) = (sys::process_cpu() - cpu0, t0.elapsed());
            if queued {
                // Nothing may be left over for the next mode.
                match tap.read(&mut reads) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Ok(_) => {
                        return Err(io::Error::other(format!(
                            "{}: more than {total} frames were queued",
                            mode.name()
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            if round > 0 {
                tally[m].frames += total as u64;
                tally[m].cpu += cpu;
                tally[m].wall += wall;
            }
        }
    }
    check_frames(&mut tap, &source, &mut ring, &message)?;

    println!(
        "{} frames per mode ({rounds} rounds of {per_round}), {payload}-byte UDP payloads, \
         io_uring depth {}",
        rounds * per_round,
        ring.depth()
    );
    println!(
        "{:<12} {:>12} {:>12} {:>10}",
        "mode", "cpu ns/frame", "wall ns/frame", "vs syscall"
    );
    for (m, mode) in Mode::ALL.iter().enumerate() {
        let t = tally[m];
        let per = |d: Duration| d.as_nanos() as f64 / t.frames as f64;
        let base = if m < 4 { tally[0] } else { tally[4] };
        let ratio = per(t.cpu) / (base.cpu.as_nanos() as f64 / base.frames as f64);
        println!(
            "{:<12} {:>12.0} {:>12.0} {:>10.2}",
            mode.name(),
            per(t.cpu),
            per(t.wall),
            ratio
        );
    }
    Ok(())
}

/// A read returns the frame the kernel queued: checked once for each way of
/// reading, so that a fast mode is not a mode that reads nothing.
fn check_frames(
    tap: &mut std::fs::File,
    source: &UdpSocket,
    ring: &mut sys::Ring,
    message: &[u8],
) -> io::Result<()> {
    let want = |f: &[u8]| f.len() >= 42 + message.len() && f[42..42 + message.len()] == *message;
    source.send(message)?;
    let mut buf = vec![0u8; 2048];
    let n = tap.read(&mut buf)?;
    if !want(&buf[..n]) {
        return Err(io::Error::other(
            "read(2) returned a frame without the datagram",
        ));
    }
    for fixed in [false, true] {
        source.send(message)?;
        let (bytes, last) = ring.read(tap.as_raw_fd(), 1, fixed)?;
        if !want(&ring.buffer(last)[..bytes as usize]) {
            return Err(io::Error::other(
                "io_uring read returned a frame without the datagram",
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(1));
    Ok(())
}

/// A frame written to the TAP reaches the sink, either way of writing.
fn check_writes(
    tap: &mut std::fs::File,
    sink: &UdpSocket,
    ring: &mut sys::Ring,
    inbound: &[u8],
) -> io::Result<()> {
    sink.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = vec![0u8; 2048];
    for how in ["write(2)", "io_uring"] {
        if how == "io_uring" {
            ring.write(tap.as_raw_fd(), inbound, 1)?;
        } else {
            tap.write_all(inbound)?;
        }
        let n = sink.recv(&mut buf).map_err(|e| {
            io::Error::other(format!(
                "a frame written with {how} never reached the sink: {e}"
            ))
        })?;
        if buf[..n] != inbound[42..] {
            return Err(io::Error::other(format!("{how}: the sink got other bytes")));
        }
    }
    Ok(())
}

fn parse_mac(s: &str) -> io::Result<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let part = parts
            .next()
            .ok_or_else(|| io::Error::other(format!("bad MAC {s}")))?;
        *b = u8::from_str_radix(part, 16).map_err(|_| io::Error::other(format!("bad MAC {s}")))?;
    }
    Ok(mac)
}

/// An Ethernet frame carrying an IPv4 UDP datagram from the peer to the sink
/// (no UDP checksum, a correct IPv4 header checksum).
fn frame(our_mac: &[u8; 6], payload: usize) -> Vec<u8> {
    let mut f = Vec::with_capacity(42 + payload);
    f.extend_from_slice(our_mac);
    f.extend_from_slice(&PEER_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&PEER.octets());
    ip[16..20].copy_from_slice(&OURS.octets());
    let sum = ip
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>();
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&5555u16.to_be_bytes());
    f.extend_from_slice(&SINK_PORT.to_be_bytes());
    f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend(std::iter::repeat_n(0xa5u8, payload));
    f
}
