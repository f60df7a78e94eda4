//! The VXLAN UDP sockets: one listener per worker on the VXLAN port, or two
//! when datagrams are sorted by outer checksum (`SO_REUSEPORT`, so the kernel
//! spreads flows over workers), and per worker a
//! pool of sending sockets bound to ports in 49152–65535 that give each inner
//! flow its own outer source port. Every worker's pool has the same ports
//! (`SO_REUSEPORT` again), so a flow's source port does not depend on the
//! worker that sends it.
//!
//! Over an IPv6 underlay the sockets are IPv6 (`IPV6_V6ONLY`). The kernel
//! verifies the checksum of every UDP datagram over IPv6 and drops those
//! with a zero one (RFC 8200; flannel's kernel device sends checksums over
//! IPv6 by default), so there is nothing to sort and one listener per worker
//! receives everything as covered.

use super::error::DataplaneError;
use super::offload::ActiveOffloads;
use super::sys;
use crate::core::flow::SOURCE_PORT_MIN;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{IpAddr, SocketAddr};

/// A sending socket and the source port it gives its flows.
#[derive(Debug)]
pub struct SourceSocket {
    /// The socket, bound to the port.
    pub socket: Socket,
    /// The outer source port.
    pub port: u16,
}

/// A nonblocking UDP socket of the family of `addr`; an IPv6 one takes
/// only IPv6 (weft runs one dataplane per family).
fn new_udp(addr: &SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(*addr),
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    Ok(socket)
}

/// A worker's listening sockets on the VXLAN port.
#[derive(Debug)]
pub struct Listener {
    /// Datagrams whose inner checksums must be verified: all of them, or,
    /// when `covered` exists, those that came with a zero outer UDP checksum.
    pub verify: Socket,
    /// Datagrams that came with a nonzero outer UDP checksum, which the
    /// kernel verified before delivering them.
    pub covered: Option<Socket>,
    /// Every datagram on `verify` was checksummed and verified by the kernel
    /// (IPv6, when the split was wanted): its inner checksums are not checked again.
    pub all_covered: bool,
}

/// Binds the listening sockets of `workers` workers on `addr`, one
/// `SO_REUSEPORT` group. With `split_by_checksum`, each worker gets a second
/// socket and a classic BPF program sorts datagrams by their outer UDP
/// checksum: nonzero to the `covered` sockets, zero to the `verify` ones,
/// keeping a flow on one worker either way. Returns the listeners and, if the
/// split was wanted but the kernel refused the program, why (all datagrams
/// are then verified).
///
/// The `verify` sockets are bound first, so until the program is attached
/// (and if it cannot be) every datagram lands on one of them.
///
/// On IPv6 no program is needed: every datagram has a checksum the kernel
/// verified, and with `split_by_checksum` the one socket per worker is `all_covered`.
pub fn bind_listeners(
    addr: SocketAddr,
    workers: usize,
    buffer: usize,
    offloads: &mut ActiveOffloads,
    split_by_checksum: bool,
) -> Result<(Vec<Listener>, Option<std::io::Error>), DataplaneError> {
    let workers = workers.max(1);
    let mut verify = Vec::with_capacity(workers);
    for _ in 0..workers {
        verify.push(bind_listener(addr, buffer, offloads)?);
    }
    let mut refused = None;
    let mut covered = Vec::new();
    let all_covered = addr.is_ipv6() && split_by_checksum;
    if split_by_checksum && !addr.is_ipv6() {
        match sys::attach_reuseport_cbpf(&verify[0], &checksum_split_program(workers as u32)) {
            Ok(()) => {
                for _ in 0..workers {
                    covered.push(bind_listener(addr, buffer, offloads)?);
                }
            }
            Err(e) => refused = Some(e),
        }
    }
    if covered.is_empty() && workers > 1 {
        // Without it the kernel hashes the 4-tuple with a random secret, and
        // a weft peer's 16 source ports can land, say, 12 on one worker and
        // 4 on the other. Refused, that hash is still a spread.
        let program = flow_spread_program(workers as u32, addr.is_ipv6());
        if let Err(e) = sys::attach_reuseport_cbpf(&verify[0], &program) {
            tracing::debug!("flows spread by the kernel's hash: reuseport program refused ({e})");
        }
    }
    let mut covered = covered.into_iter();
    let listeners = verify
        .into_iter()
        .map(|verify| Listener {
            verify,
            covered: covered.next(),
            all_covered,
        })
        .collect();
    Ok((listeners, refused))
}

/// The classic BPF program of [`bind_listeners`] for `workers` workers. It
/// runs on each datagram with the UDP header already pulled (offsets relative
/// to the IP header go through `SKF_NET_OFF`) and returns the index of the
/// receiving socket: `hash % workers` for a zero outer checksum, `workers +
/// hash % workers` for a nonzero one, where `hash` is the outer source address
/// XOR the source port (fixed per flow: a VXLAN sender derives the port from
/// the inner flow). A load past the packet ends the program with 0: a
/// `verify` socket.
pub fn checksum_split_program(workers: u32) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_ABS, BPF_ADD, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_LDX,
        BPF_MEM, BPF_MISC, BPF_MOD, BPF_MSH, BPF_RET, BPF_ST, BPF_TAX, BPF_TXA, BPF_W, BPF_X,
        BPF_XOR, SKF_NET_OFF,
    };
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let net = |offset: i32| (SKF_NET_OFF + offset) as u32;
    let n = workers.max(1);
    vec![
        // X = the IPv4 header length; the UDP header follows it.
        op(BPF_LDX | BPF_B | BPF_MSH, net(0)),
        // M[0] = the UDP checksum, M[1] = the UDP source port.
        op(BPF_LD | BPF_H | BPF_IND, net(6)),
        op(BPF_ST, 0),
        op(BPF_LD | BPF_H | BPF_IND, net(0)),
        op(BPF_ST, 1),
        // X = (source address ^ source port) % workers.
        op(BPF_LD | BPF_W | BPF_ABS, net(12)),
        op(BPF_LDX | BPF_MEM, 1),
        op(BPF_ALU | BPF_XOR | BPF_X, 0),
        op(BPF_ALU | BPF_MOD | BPF_K, n),
        op(BPF_MISC | BPF_TAX, 0),
        // Zero checksum: return X; else X + workers.
        op(BPF_LD | BPF_MEM, 0),
        libc::sock_filter {
            code: (BPF_JMP | BPF_JEQ | BPF_K) as u16,
            jt: 0,
            jf: 2,
            k: 0,
        },
        op(BPF_MISC | BPF_TXA, 0),
        op(BPF_RET | libc::BPF_A, 0),
        op(BPF_MISC | BPF_TXA, 0),
        op(BPF_ALU | BPF_ADD | BPF_K, n),
        op(BPF_RET | libc::BPF_A, 0),
    ]
}

/// The classic BPF program that spreads datagrams over `workers` listeners
/// when they are not sorted by checksum: socket `(source address ^ source
/// port) % workers`, the worker [`checksum_split_program`] would pick. A weft
/// peer's source ports step by an odd number (see [`bind_source_pools`]), so
/// its ports, and with them its flows, spread evenly over the workers. Over
/// IPv6 the UDP header is taken to follow the fixed header and the address's
/// last word is used; a load past the packet ends the program with 0.
pub fn flow_spread_program(workers: u32, ipv6: bool) -> Vec<libc::sock_filter> {
    use libc::{
        BPF_A, BPF_ABS, BPF_ALU, BPF_B, BPF_H, BPF_IND, BPF_LD, BPF_LDX, BPF_MEM, BPF_MOD, BPF_MSH,
        BPF_RET, BPF_ST, BPF_W, BPF_X, BPF_XOR, SKF_NET_OFF,
    };
    let op = |code: u32, k: u32| libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    };
    let net = |offset: i32| (SKF_NET_OFF + offset) as u32;
    let mut program = if ipv6 {
        vec![
            // M[0] = the UDP source port; A = the source address's last word.
            op(BPF_LD | BPF_H | BPF_ABS, net(40)),
            op(BPF_ST, 0),
            op(BPF_LD | BPF_W | BPF_ABS, net(20)),
        ]
    } else {
        vec![
            // X = the IPv4 header length; M[0] = the UDP source port.
            op(BPF_LDX | BPF_B | BPF_MSH, net(0)),
            op(BPF_LD | BPF_H | BPF_IND, net(0)),
            op(BPF_ST, 0),
            op(BPF_LD | BPF_W | BPF_ABS, net(12)),
        ]
    };
    program.extend([
        op(BPF_LDX | BPF_MEM, 0),
        op(BPF_ALU | BPF_XOR | BPF_X, 0),
        op(BPF_ALU | BPF_MOD | libc::BPF_K, workers.max(1)),
        op(BPF_RET | BPF_A, 0),
    ]);
    program
}

/// One listening socket. Turns on UDP GRO if `offloads` wants it and the
/// kernel has it (clearing `offloads.udp_gro` otherwise).
fn bind_listener(
    addr: SocketAddr,
    buffer: usize,
    offloads: &mut ActiveOffloads,
) -> Result<Socket, DataplaneError> {
    let err = |source| DataplaneError::Bind { addr, source };
    let socket = new_udp(&addr).map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    // Buffers are best effort: a small buffer costs drops under bursts, not correctness.
    let _ = sys::force_socket_buffers(&socket, buffer, buffer);
    let _ = sys::set_rxq_ovfl(&socket, true);
    let _ = sys::set_pmtudisc_dont(&socket, addr.is_ipv6());
    if offloads.udp_gro && sys::set_udp_gro(&socket, true).is_err() {
        offloads.udp_gro = false;
    }
    Ok(socket)
}

/// Binds `count` ports in 49152–65535 on `ip` for sending, with one socket
/// per port for each of `workers` workers; returns each worker's pool, the
/// same ports in the same order.
///
/// The ports are the same for every worker because the TAP steers a flow's
/// frames to the queue its replies were written on: were the source port
/// per worker, a flow moved to another worker would change its port, and
/// with it the peer's receiving worker and the queue of its replies, and a
/// flow could keep bouncing between workers (seen: half of one stream's
/// frames on each worker, on both nodes). One descriptor shared by all
/// workers would do the same but wake every worker's epoll at each send.
///
/// A port is taken only if a plain bind (without `SO_REUSEPORT`) succeeds
/// first, so weftd does not join some other program's `SO_REUSEPORT` group.
/// Ports are tried from a start that depends on the address so that
/// restarts usually get the same ports.
pub fn bind_source_pools(
    ip: IpAddr,
    count: usize,
    workers: usize,
    buffer: usize,
) -> Result<Vec<Vec<SourceSocket>>, DataplaneError> {
    let span = u32::from(u16::MAX - SOURCE_PORT_MIN) + 1;
    let count = count.max(1);
    let mut pools: Vec<Vec<SourceSocket>> = (0..workers.max(1))
        .map(|_| Vec::with_capacity(count))
        .collect();
    let mut last_err = None;
    let last_octet = match ip {
        IpAddr::V4(v4) => v4.octets()[3],
        IpAddr::V6(v6) => v6.octets()[15],
    };
    let start = (u32::from(last_octet) * 31) % span;
    // 7919 is prime and so coprime with the span: every port is tried once.
    for i in 0..span {
        if pools[0].len() == count {
            break;
        }
        let port = SOURCE_PORT_MIN + ((start + i * 7919) % span) as u16;
        let addr = SocketAddr::new(ip, port);
        let free = new_udp(&addr).and_then(|probe| probe.bind(&addr.into()));
        if let Err(e) = free {
            last_err = Some(e);
            continue;
        }
        let sockets: std::io::Result<Vec<_>> =
            pools.iter().map(|_| source_socket(addr, buffer)).collect();
        match sockets {
            Ok(sockets) => {
                for (pool, socket) in pools.iter_mut().zip(sockets) {
                    pool.push(SourceSocket { socket, port });
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    if pools[0].is_empty() {
        let source = last_err.unwrap_or_else(|| std::io::Error::other("no free port"));
        return Err(DataplaneError::SourcePorts { ip, source });
    }
    Ok(pools)
}

fn source_socket(addr: SocketAddr, buffer: usize) -> std::io::Result<Socket> {
    let socket = new_udp(&addr)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let _ = sys::force_socket_buffers(&socket, 64 << 10, buffer);
    let _ = sys::set_pmtudisc_dont(&socket, addr.is_ipv6());
    // Nothing is ever read from a sending socket: keep its receive queue tiny.
    let _ = socket.set_recv_buffer_size(4096);
    Ok(socket)
}

/// Whether UDP GSO can be used on this socket.
pub fn gso_works(socket: &Socket) -> bool {
    sys::udp_gso_supported(socket)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the classic BPF subset [`checksum_split_program`] uses, the way
    /// the kernel runs a reuseport program: `net` is the packet from its IP
    /// header (reached through `SKF_NET_OFF`); a load past it ends with 0.
    fn run(program: &[libc::sock_filter], net: &[u8]) -> u32 {
        use libc::*;
        let (mut a, mut x, mut mem) = (0u32, 0u32, [0u32; 16]);
        let load = |k: i64, size: usize| -> Option<u32> {
            let at = usize::try_from(k - i64::from(SKF_NET_OFF)).ok()?;
            let bytes = net.get(at..at + size)?;
            Some(bytes.iter().fold(0, |v, b| (v << 8) | u32::from(*b)))
        };
        let mut pc = 0;
        loop {
            let i = program[pc];
            let k = i.k;
            let signed = i64::from(k as i32);
            pc += 1;
            match u32::from(i.code) {
                c if c == BPF_LDX | BPF_B | BPF_MSH => match load(signed, 1) {
                    Some(v) => x = (v & 0xf) * 4,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_H | BPF_IND => match load(signed + i64::from(x), 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_H | BPF_ABS => match load(signed, 2) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_W | BPF_ABS => match load(signed, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_ST => mem[k as usize] = a,
                c if c == BPF_LDX | BPF_MEM => x = mem[k as usize],
                c if c == BPF_LD | BPF_MEM => a = mem[k as usize],
                c if c == BPF_ALU | BPF_XOR | BPF_X => a ^= x,
                c if c == BPF_ALU | BPF_MOD | BPF_K => a %= k,
                c if c == BPF_ALU | BPF_ADD | BPF_K => a = a.wrapping_add(k),
                c if c == BPF_MISC | BPF_TAX => x = a,
                c if c == BPF_MISC | BPF_TXA => a = x,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += usize::from(if a == k { i.jt } else { i.jf });
                }
                c if c == BPF_RET | BPF_A => return a,
                c => panic!("opcode {c:#x} not in the test interpreter"),
            }
        }
    }

    /// An IPv4 + UDP header from `src`:`sport` with UDP checksum `check`
    /// (and `options` bytes of IP options).
    fn packet(src: [u8; 4], sport: u16, check: u16, options: usize) -> Vec<u8> {
        let mut p = vec![
            0x45 + (options / 4) as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            64,
            17,
            0,
            0,
        ];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[192, 168, 0, 1]);
        p.extend(std::iter::repeat_n(1, options));
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&4789u16.to_be_bytes());
        p.extend_from_slice(&[0, 60]);
        p.extend_from_slice(&check.to_be_bytes());
        p
    }

    #[test]
    fn the_program_sorts_by_outer_checksum_and_keeps_a_flow_on_its_worker() {
        for workers in [1u32, 2, 3, 8] {
            let program = checksum_split_program(workers);
            let mut used = std::collections::BTreeSet::new();
            for sport in 49152..49152 + 64 {
                for options in [0, 4, 8] {
                    let src = [10, 0, 0, (sport % 7) as u8];
                    let zero = run(&program, &packet(src, sport, 0, options));
                    let covered = run(&program, &packet(src, sport, 0xbeef, options));
                    assert!(zero < workers, "{workers} workers: zero -> {zero}");
                    assert_eq!(covered, zero + workers, "the flow's worker, covered socket");
                    used.insert(zero);
                }
            }
            assert_eq!(used.len(), workers as usize, "flows reach every worker");
        }
    }

    #[test]
    fn a_packet_too_short_for_the_program_goes_to_a_verifying_socket() {
        let program = checksum_split_program(4);
        let full = packet([10, 0, 0, 1], 50000, 0xbeef, 0);
        for len in 0..full.len() {
            assert_eq!(run(&program, &full[..len]), 0, "{len} bytes");
        }
        assert_eq!(run(&program, &full) / 4, 1);
    }

    /// An IPv6 + UDP header from `src`:`sport`.
    fn packet6(src: [u8; 16], sport: u16) -> Vec<u8> {
        let mut p = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        p.extend_from_slice(&src);
        p.extend_from_slice(&[0xfd; 16]);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&4789u16.to_be_bytes());
        p.extend_from_slice(&[0, 8, 0xbe, 0xef]);
        p
    }

    /// The source ports a weft peer at `.2` binds, when all are free.
    fn peer_ports() -> Vec<u16> {
        let span = u32::from(u16::MAX - SOURCE_PORT_MIN) + 1;
        (0..16)
            .map(|i| SOURCE_PORT_MIN + ((2 * 31 + i * 7919) % span) as u16)
            .collect()
    }

    #[test]
    fn the_spread_program_shares_a_peers_ports_evenly_and_agrees_with_the_split() {
        for workers in [2u32, 4] {
            let spread = flow_spread_program(workers, false);
            let split = checksum_split_program(workers);
            let mut per_worker = vec![0; workers as usize];
            for port in peer_ports() {
                let p = packet([192, 168, 100, 2], port, 0, 0);
                let worker = run(&spread, &p);
                assert_eq!(worker, run(&split, &p), "port {port}");
                per_worker[worker as usize] += 1;
            }
            assert!(
                per_worker.iter().all(|&n| n == 16 / workers),
                "{workers} workers: {per_worker:?}"
            );
            let mut src = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
            let spread6 = flow_spread_program(workers, true);
            per_worker.fill(0);
            for port in peer_ports() {
                per_worker[run(&spread6, &packet6(src, port)) as usize] += 1;
            }
            assert!(
                per_worker.iter().all(|&n| n == 16 / workers),
                "{per_worker:?}"
            );
            src[15] = 3;
            let full = packet6(src, 50001);
            assert_eq!(run(&spread6, &full), (3 ^ 50001) % workers);
            // The program reads up to the source port's end, byte 42.
            for len in 0..42 {
                assert_eq!(run(&spread6, &full[..len]), 0, "{len} bytes");
            }
        }
    }

    /// The kernel takes the spread program and follows it: datagrams from
    /// 16 source ports on loopback land on listener `(address ^ port) % 2`,
    /// over IPv4 and IPv6.
    #[test]
    fn the_kernel_spreads_datagrams_over_the_listeners_as_the_program_says() {
        use std::net::{Ipv6Addr, UdpSocket};
        for ip in [
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(Ipv6Addr::LOCALHOST),
        ] {
            let port = UdpSocket::bind((ip, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let addr = SocketAddr::new(ip, port);
            let mut offloads = ActiveOffloads::default();
            let (listeners, _) = bind_listeners(addr, 2, 1 << 20, &mut offloads, false).unwrap();
            let last_word = match ip {
                IpAddr::V4(v4) => u32::from(v4),
                IpAddr::V6(v6) => u32::from_be_bytes(v6.octets()[12..].try_into().unwrap()),
            };
            let mut expected = [0usize; 2];
            for _ in 0..16 {
                let sender = UdpSocket::bind((ip, 0)).unwrap();
                let sport = sender.local_addr().unwrap().port();
                expected[((last_word ^ u32::from(sport)) % 2) as usize] += 1;
                sender.send_to(b"x", addr).unwrap();
            }
            let mut got = [0usize; 2];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while got.iter().sum::<usize>() < 16 && std::time::Instant::now() < deadline {
                for (n, listener) in got.iter_mut().zip(&listeners) {
                    let mut buf = [std::mem::MaybeUninit::new(0u8); 16];
                    while listener.verify.recv(&mut buf).is_ok() {
                        *n += 1;
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert_eq!(got, expected, "{ip}: datagrams per listener");
        }
    }
}
