//! The VXLAN UDP sockets: one listener per worker on the VXLAN port, or two
//! when datagrams are sorted by outer checksum (`SO_REUSEPORT`, so the kernel
//! spreads flows over workers), and per worker a
//! pool of sending sockets bound to ports in 49152–65535 that give each inner
//! flow its own outer source port. Every worker's pool has the same ports
//! (`SO_REUSEPORT` again), so a flow's source port does not depend on the
//! worker that sends it.

use super::offload::ActiveOffloads;
use super::{DataplaneError, sys};
use crate::core::flow::SOURCE_PORT_MIN;
use socket2::{Domain, Protocol, Socket, Type};
use std::net::{Ipv4Addr, SocketAddrV4};

/// A sending socket and the source port it gives its flows.
#[derive(Debug)]
pub struct SourceSocket {
    pub socket: Socket,
    pub port: u16,
}

fn new_udp() -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::IPV4,
        Type::DGRAM.nonblocking().cloexec(),
        Some(Protocol::UDP),
    )?;
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
pub fn bind_listeners(
    addr: SocketAddrV4,
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
    if split_by_checksum {
        match sys::attach_reuseport_cbpf(&verify[0], &checksum_split_program(workers as u32)) {
            Ok(()) => {
                for _ in 0..workers {
                    covered.push(bind_listener(addr, buffer, offloads)?);
                }
            }
            Err(e) => refused = Some(e),
        }
    }
    let mut covered = covered.into_iter();
    let listeners = verify
        .into_iter()
        .map(|verify| Listener {
            verify,
            covered: covered.next(),
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

/// One listening socket. Turns on UDP GRO if `offloads` wants it and the
/// kernel has it (clearing `offloads.udp_gro` otherwise).
fn bind_listener(
    addr: SocketAddrV4,
    buffer: usize,
    offloads: &mut ActiveOffloads,
) -> Result<Socket, DataplaneError> {
    let err = |source| DataplaneError::Bind { addr, source };
    let socket = new_udp().map_err(err)?;
    socket.set_reuse_port(true).map_err(err)?;
    socket.bind(&addr.into()).map_err(err)?;
    // Buffers are best effort: a small buffer costs drops under bursts, not correctness.
    let _ = sys::force_socket_buffers(&socket, buffer, buffer);
    let _ = sys::set_rxq_ovfl(&socket, true);
    let _ = sys::set_pmtudisc_dont(&socket);
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
    ip: Ipv4Addr,
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
    let start = (u32::from(ip.octets()[3]) * 31) % span;
    // 7919 is prime and so coprime with the span: every port is tried once.
    for i in 0..span {
        if pools[0].len() == count {
            break;
        }
        let port = SOURCE_PORT_MIN + ((start + i * 7919) % span) as u16;
        let addr = SocketAddrV4::new(ip, port);
        let free = new_udp().and_then(|probe| probe.bind(&addr.into()));
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

fn source_socket(addr: SocketAddrV4, buffer: usize) -> std::io::Result<Socket> {
    let socket = new_udp()?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    let _ = sys::force_socket_buffers(&socket, 64 << 10, buffer);
    let _ = sys::set_pmtudisc_dont(&socket);
    // Nothing is ever read from a sending socket: keep its receive queue tiny.
    let _ = socket.set_recv_buffer_size(4096);
    Ok(socket)
}

/// Whether UDP GSO can be used on this socket.
pub fn gso_works(socket: &Socket) -> bool {
    sys::udp_gso_supported(socket)
}
