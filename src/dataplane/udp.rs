//! The VXLAN UDP sockets: one listener per worker on the VXLAN port
//! (`SO_REUSEPORT`, so the kernel spreads flows over workers), and per worker a
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

/// The listening socket of one worker. Turns on UDP GRO if `offloads` wants it
/// and the kernel has it (clearing `offloads.udp_gro` otherwise).
pub fn bind_listener(
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
