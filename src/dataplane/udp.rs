//! The VXLAN UDP sockets: one listener per worker on the VXLAN port
//! (`SO_REUSEPORT`, so the kernel spreads flows over workers), and per worker a
//! pool of sending sockets bound to ports in 49152–65535 that give each inner
//! flow its own outer source port.

use super::offload::ActiveOffloads;
use super::{DataplaneError, sys};
use crate::core::flow::SOURCE_PORT_MIN;
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeSet;
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

/// Binds `count` sending sockets on `ip`, on ports in 49152–65535 not in `used`.
/// Ports are tried from a start that depends on the worker so that restarts
/// usually get the same ports.
pub fn bind_source_pool(
    ip: Ipv4Addr,
    count: usize,
    buffer: usize,
    worker: usize,
    used: &mut BTreeSet<u16>,
) -> Result<Vec<SourceSocket>, DataplaneError> {
    let span = u32::from(u16::MAX - SOURCE_PORT_MIN) + 1;
    let mut pool = Vec::with_capacity(count.max(1));
    let mut last_err = None;
    let start = (worker as u32 * 257 + u32::from(ip.octets()[3]) * 31) % span;
    for i in 0..span {
        if pool.len() == count.max(1) {
            break;
        }
        let port = SOURCE_PORT_MIN + ((start + i * 7919) % span) as u16;
        if !used.insert(port) {
            continue;
        }
        let socket = new_udp().map_err(|source| DataplaneError::SourcePorts { ip, source })?;
        match socket.bind(&SocketAddrV4::new(ip, port).into()) {
            Ok(()) => {
                let _ = sys::force_socket_buffers(&socket, 64 << 10, buffer);
                let _ = sys::set_pmtudisc_dont(&socket);
                // Nothing is ever read from a sending socket: keep its receive queue tiny.
                let _ = socket.set_recv_buffer_size(4096);
                pool.push(SourceSocket { socket, port });
            }
            Err(e) => last_err = Some(e),
        }
    }
    if pool.is_empty() {
        let source = last_err.unwrap_or_else(|| std::io::Error::other("no free port"));
        return Err(DataplaneError::SourcePorts { ip, source });
    }
    Ok(pool)
}

/// Whether UDP GSO can be used on this socket.
pub fn gso_works(socket: &Socket) -> bool {
    sys::udp_gso_supported(socket)
}
