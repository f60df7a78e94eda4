//! UDP socket options the `socket2` crate does not cover: `UDP_SEGMENT`,
//! `UDP_GRO`, `SO_*BUFFORCE`, `IP_MTU_DISCOVER`, the `SO_REUSEPORT` BPF
//! program, `SO_NO_CHECK`, `SO_RXQ_OVFL`.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, RawFd};

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a c_int holds no pointers.
    unsafe { setsockopt(fd, level, name, &value) }
}

/// `setsockopt` with the option value `value` (`size_of::<T>()` bytes).
///
/// # Safety
/// `T` must be the C type the option takes, and any pointer in it must be
/// valid for the kernel to read, for the length it gives, during the call.
unsafe fn setsockopt<T>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a live `T` and its exact size is passed; the kernel
    // only reads it during the call (the caller vouches for its pointers).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value as *const T as *const libc::c_void,
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn getsockopt_int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and describe a c_int-sized buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut value as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// Whether the kernel accepts `UDP_SEGMENT` (UDP GSO) on this socket.
pub fn udp_gso_supported(fd: &impl AsRawFd) -> bool {
    getsockopt_int(fd.as_raw_fd(), libc::SOL_UDP, libc::UDP_SEGMENT).is_ok()
}

/// Turns on `UDP_GRO`: the kernel may hand over several datagrams in one read.
pub fn set_udp_gro(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    setsockopt_int(
        fd.as_raw_fd(),
        libc::SOL_UDP,
        libc::UDP_GRO,
        libc::c_int::from(on),
    )
}

/// Sets the socket buffers past `net.core.{r,w}mem_max` (needs CAP_NET_ADMIN);
/// falls back to the capped ordinary options.
pub fn force_socket_buffers(fd: &impl AsRawFd, recv: usize, send: usize) -> io::Result<()> {
    let fd = fd.as_raw_fd();
    let recv = libc::c_int::try_from(recv).unwrap_or(libc::c_int::MAX);
    let send = libc::c_int::try_from(send).unwrap_or(libc::c_int::MAX);
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, recv).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, recv)?;
    }
    if setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, send).is_err() {
        setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, send)?;
    }
    Ok(())
}

/// Never sets DF on outgoing datagrams and fragments them when needed, as
/// flannel's kernel VXLAN device does (no `df` attribute: the outer header's DF is clear).
/// On an IPv6 socket (`ipv6`) the same for `IPV6_MTU_DISCOVER`: datagrams
/// larger than the path MTU are fragmented by this host.
pub fn set_pmtudisc_dont(fd: &impl AsRawFd, ipv6: bool) -> io::Result<()> {
    let (level, name, value) = if ipv6 {
        (
            libc::IPPROTO_IPV6,
            libc::IPV6_MTU_DISCOVER,
            libc::IPV6_PMTUDISC_DONT,
        )
    } else {
        (
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            libc::IP_PMTUDISC_DONT,
        )
    };
    setsockopt_int(fd.as_raw_fd(), level, name, value)
}

/// `SO_ATTACH_REUSEPORT_CBPF` (Linux 4.5; not exported by `libc` for every target).
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Attaches a classic BPF program to the `SO_REUSEPORT` group of `fd`: for
/// each datagram it returns the index (in bind order) of the group's socket
/// that receives it; an index past the group falls back to the kernel's hash.
pub fn attach_reuseport_cbpf(fd: &impl AsRawFd, program: &[libc::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(program.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "BPF program too long"))?;
    let prog = libc::sock_fprog {
        len,
        filter: program.as_ptr().cast_mut(),
    };
    // SAFETY: SO_ATTACH_REUSEPORT_CBPF takes a sock_fprog; its pointer is to
    // `len` instructions of `program`, which outlives the call (the kernel
    // copies them and does not write through the pointer).
    unsafe {
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            &prog,
        )
    }
}

/// `SOL_SOCKET` option number on x86-64 and aarch64 (not exported by `libc`).
const SO_NO_CHECK: libc::c_int = 11;

/// `SO_NO_CHECK`: send IPv4 UDP datagrams with a zero checksum (as flannel's
/// kernel VXLAN device does); tests use it to play such a peer.
pub fn set_udp_no_check(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    setsockopt_int(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        SO_NO_CHECK,
        libc::c_int::from(on),
    )
}

/// Reads `SO_RXQ_OVFL` counts: the kernel reports datagrams it dropped for a full buffer.
pub fn set_rxq_ovfl(fd: &impl AsRawFd, on: bool) -> io::Result<()> {
    setsockopt_int(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_RXQ_OVFL,
        libc::c_int::from(on),
    )
}
