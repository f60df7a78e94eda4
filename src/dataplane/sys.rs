//! The only module of weft that talks to the kernel through `unsafe`: TAP
//! ioctls, UDP socket options the `socket2` crate does not cover
//! (`UDP_SEGMENT`, `UDP_GRO`, `SO_*BUFFORCE`), and batched `recvmmsg` /
//! `sendmmsg` with per-message control data.
//!
//! The batch types are written here rather than taken from `nix` or
//! `quinn-udp` because the data path needs scatter-gather sends (one header
//! buffer plus payload slices that point into the TAP read buffer, so a
//! super-frame is never copied in userspace), per-message GSO sizes, and
//! header arrays that are allocated once per worker and reused for every
//! batch. `quinn-udp` sends one contiguous buffer per call; `nix`'s
//! `MultiHeaders` cannot mix iovec counts per message.
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `struct ifreq` as TUNSETIFF reads it: the name and the flags.
#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// TAP interface flags for [`open_tap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TapFlags {
    /// Prefix every frame with a `virtio_net_hdr` (offloads).
    pub vnet_hdr: bool,
}

/// Opens (creating it if needed) one queue of the multi-queue TAP device `name`.
/// The descriptor is non-blocking and close-on-exec.
pub fn open_tap(name: &str, flags: TapFlags) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} must be 1..15 bytes"),
        ));
    }
    let path = c"/dev/net/tun";
    // SAFETY: `path` is a valid NUL-terminated string; open has no other preconditions.
    let raw = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a descriptor we just opened and own exclusively.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let mut ifr_flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE;
    if flags.vnet_hdr {
        ifr_flags |= libc::IFF_VNET_HDR;
    }
    req.flags = ifr_flags as libc::c_short;
    // SAFETY: TUNSETIFF reads a `struct ifreq`; `req` has its layout (name, then the
    // flags union member) and the full size, and lives across the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReqFlags) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

fn ioctl_int(fd: RawFd, request: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the TUN ioctls used with this helper take their argument by value.
    let rc = unsafe { libc::ioctl(fd, request, value) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Keeps the TAP device (with its addresses and routes) when the last queue closes.
pub fn set_tap_persist(fd: &OwnedFd, persist: bool) -> io::Result<()> {
    ioctl_int(
        fd.as_raw_fd(),
        libc::TUNSETPERSIST,
        libc::c_ulong::from(persist),
    )
}

/// Sets the offloads (`TUN_F_*`) the kernel may hand us through the virtio header.
pub fn set_tap_offload(fd: &OwnedFd, flags: u32) -> io::Result<()> {
    ioctl_int(
        fd.as_raw_fd(),
        libc::TUNSETOFFLOAD,
        libc::c_ulong::from(flags),
    )
}

/// Sets the virtio-net header length the TAP expects (10 or 12 bytes).
pub fn set_tap_vnet_hdr_len(fd: &OwnedFd, len: i32) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len as *const i32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

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
pub fn set_pmtudisc_dont(fd: &impl AsRawFd) -> io::Result<()> {
    setsockopt_int(
        fd.as_raw_fd(),
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_DONT,
    )
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

/// The interface name for an index, for error messages.
pub fn if_name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: `buf` has IFNAMSIZ bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success if_indextoname wrote a NUL-terminated name into `buf`.
    Some(
        unsafe { CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

fn sockaddr_v4(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// Control buffer space for one `UDP_SEGMENT`/`UDP_GRO` message (a u16 or an int).
const CMSG_BUF: usize = 128;

/// Bytes of control data needed for one cmsg carrying `len` bytes.
fn cmsg_space(len: usize) -> usize {
    // SAFETY: CMSG_SPACE is pure arithmetic on its argument.
    unsafe { libc::CMSG_SPACE(len as u32) as usize }
}

/// One received datagram (or, with GRO, a run of equal-sized datagrams).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecvMeta {
    /// Bytes received into the slot.
    pub len: usize,
    /// Source address (IPv4 only; other families report 0.0.0.0:0).
    pub src: Option<SocketAddrV4>,
    /// With UDP_GRO: the size of each coalesced datagram but the last; `len` when not coalesced.
    pub stride: usize,
    /// The message was truncated to the slot size.
    pub truncated: bool,
    /// Control data was cut off: the GRO segment size may be missing, so the
    /// run cannot be split safely.
    pub control_truncated: bool,
    /// `SO_RXQ_OVFL`: datagrams the kernel dropped on this socket so far (a running total).
    pub kernel_drops: Option<u32>,
}

/// Reusable `recvmmsg` state for up to `capacity` messages.
pub struct RecvBatch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    control: Vec<[u64; CMSG_BUF / 8]>,
}

// SAFETY: the raw pointers inside are only written and read during `recv`,
// where they point into the caller's buffers and this struct's own vectors;
// between calls they are dead values, so moving the struct to another thread is sound.
unsafe impl Send for RecvBatch {}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.headers.len())
            .finish()
    }
}

impl RecvBatch {
    pub fn new(capacity: usize) -> RecvBatch {
        // SAFETY: all-zero is a valid (empty) value for these plain C structs.
        let zeroed_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let zeroed_addr: libc::sockaddr_in = unsafe { mem::zeroed() };
        RecvBatch {
            headers: vec![zeroed_hdr; capacity],
            iovecs: vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0
                };
                capacity
            ],
            addrs: vec![zeroed_addr; capacity],
            control: vec![[0; CMSG_BUF / 8]; capacity],
        }
    }

    pub fn capacity(&self) -> usize {
        self.headers.len()
    }

    /// Receives up to `slots.len()` messages without blocking; fills `meta`.
    /// Returns how many arrived (an `io::ErrorKind::WouldBlock` error when none).
    pub fn recv<B: AsMut<[u8]>>(
        &mut self,
        fd: &impl AsRawFd,
        slots: &mut [B],
        meta: &mut [RecvMeta],
    ) -> io::Result<usize> {
        let n = slots.len().min(self.headers.len()).min(meta.len());
        for (i, slot) in slots.iter_mut().enumerate().take(n) {
            let slot = slot.as_mut();
            self.iovecs[i] = libc::iovec {
                iov_base: slot.as_mut_ptr().cast(),
                iov_len: slot.len(),
            };
            let hdr = &mut self.headers[i];
            hdr.msg_len = 0;
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = &mut self.iovecs[i];
            hdr.msg_hdr.msg_iovlen = 1;
            hdr.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            hdr.msg_hdr.msg_controllen = CMSG_BUF as _;
            hdr.msg_hdr.msg_flags = 0;
        }
        // SAFETY: the first `n` headers point at live iovecs, address and control
        // buffers of the sizes given, and the iovecs at the caller's slots, all of
        // which outlive the call.
        let got = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.headers.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        for (i, meta) in meta.iter_mut().enumerate().take(got) {
            let hdr = &self.headers[i];
            let len = hdr.msg_len as usize;
            let addr = &self.addrs[i];
            let src = (addr.sin_family == libc::AF_INET as libc::sa_family_t).then(|| {
                SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                    u16::from_be(addr.sin_port),
                )
            });
            let mut stride = len;
            let mut kernel_drops = None;
            // SAFETY: the kernel filled `msg_control`/`msg_controllen` of this header;
            // the CMSG_* helpers only walk within that length, and each payload is read
            // unaligned with the size the kernel writes for that message type.
            unsafe {
                let mut cmsg = libc::CMSG_FIRSTHDR(&hdr.msg_hdr);
                while !cmsg.is_null() {
                    let (level, kind) = ((*cmsg).cmsg_level, (*cmsg).cmsg_type);
                    if level == libc::SOL_UDP && kind == libc::UDP_GRO {
                        let gso = (libc::CMSG_DATA(cmsg) as *const libc::c_int).read_unaligned();
                        if gso > 0 {
                            stride = gso as usize;
                        }
                    } else if level == libc::SOL_SOCKET && kind == libc::SO_RXQ_OVFL {
                        kernel_drops = Some((libc::CMSG_DATA(cmsg) as *const u32).read_unaligned());
                    }
                    cmsg = libc::CMSG_NXTHDR(&hdr.msg_hdr, cmsg);
                }
            }
            let flags = hdr.msg_hdr.msg_flags;
            *meta = RecvMeta {
                len,
                src,
                stride,
                truncated: flags & libc::MSG_TRUNC != 0,
                control_truncated: flags & libc::MSG_CTRUNC != 0,
                kernel_drops,
            };
        }
        Ok(got)
    }
}

/// Reusable `sendmmsg` state: messages made of several slices each, with an
/// optional GSO segment size.
pub struct SendBatch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<libc::sockaddr_in>,
    control: Vec<[u64; CMSG_BUF / 8]>,
    /// iovec range of each queued message.
    spans: Vec<(usize, usize)>,
    gso: Vec<u16>,
    /// Inner frames carried by each queued message (for accounting on failure).
    frames: Vec<u32>,
}

// SAFETY: the raw pointers inside point into buffers borrowed by a `SendQueue`
// for its lifetime; the queue clears them when dropped, so they are never read
// afterwards, and moving the struct between threads is sound.
unsafe impl Send for SendBatch {}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("queued", &self.spans.len())
            .finish()
    }
}

/// Error from [`SendBatch::flush`]: how many messages went out before it.
#[derive(Debug)]
pub struct SendError {
    pub sent: usize,
    pub error: io::Error,
}

impl SendBatch {
    /// Room for `messages` messages with `iovecs` slices in all.
    pub fn new(messages: usize, iovecs: usize) -> SendBatch {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zeroed_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let zeroed_addr: libc::sockaddr_in = unsafe { mem::zeroed() };
        SendBatch {
            headers: vec![zeroed_hdr; messages],
            iovecs: Vec::with_capacity(iovecs),
            addrs: vec![zeroed_addr; messages],
            control: vec![[0; CMSG_BUF / 8]; messages],
            spans: Vec::with_capacity(messages),
            gso: Vec::with_capacity(messages),
            frames: Vec::with_capacity(messages),
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Whether another message of `slices` slices fits.
    pub fn has_room(&self, slices: usize) -> bool {
        self.spans.len() < self.headers.len()
            && self.iovecs.len() + slices <= self.iovecs.capacity()
    }

    /// A queue whose messages may borrow data for `'b`; dropping it clears them.
    pub fn queue<'b>(&mut self) -> SendQueue<'_, 'b> {
        self.clear();
        SendQueue {
            batch: self,
            _data: std::marker::PhantomData,
        }
    }

    /// Drops every queued message.
    fn clear(&mut self) {
        self.iovecs.clear();
        self.spans.clear();
        self.gso.clear();
        self.frames.clear();
    }

    /// Records one message; the caller guarantees the slices outlive its sending.
    fn push_raw(&mut self, dst: SocketAddrV4, slices: &[&[u8]], gso: Option<u16>, frames: u32) {
        debug_assert!(self.has_room(slices.len()));
        let i = self.spans.len();
        let start = self.iovecs.len();
        for s in slices {
            self.iovecs.push(libc::iovec {
                iov_base: s.as_ptr() as *mut libc::c_void,
                iov_len: s.len(),
            });
        }
        self.spans.push((start, self.iovecs.len()));
        self.gso.push(gso.unwrap_or(0));
        self.frames.push(frames);
        self.addrs[i] = sockaddr_v4(dst);
    }

    /// Sends everything queued, retrying partial sends. On error the unsent
    /// messages stay queued: the caller decides whether to wait (WouldBlock),
    /// skip the failing one, or give up.
    fn flush(&mut self, fd: &impl AsRawFd) -> Result<usize, SendError> {
        let total = self.spans.len();
        for i in 0..total {
            let (start, end) = self.spans[i];
            let hdr = &mut self.headers[i];
            hdr.msg_len = 0;
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_in).cast();
            hdr.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_hdr.msg_iov = self.iovecs[start..end].as_mut_ptr();
            hdr.msg_hdr.msg_iovlen = end - start;
            hdr.msg_hdr.msg_flags = 0;
            if self.gso[i] > 0 {
                let control = self.control[i].as_mut_ptr().cast::<libc::c_void>();
                hdr.msg_hdr.msg_control = control;
                hdr.msg_hdr.msg_controllen = cmsg_space(mem::size_of::<u16>()) as _;
                // SAFETY: `control` is CMSG_BUF bytes, more than CMSG_SPACE(2); the
                // header was just pointed at it, so CMSG_FIRSTHDR is non-null and in bounds.
                unsafe {
                    let cmsg = libc::CMSG_FIRSTHDR(&hdr.msg_hdr);
                    (*cmsg).cmsg_level = libc::SOL_UDP;
                    (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                    (*cmsg).cmsg_len = libc::CMSG_LEN(mem::size_of::<u16>() as u32) as _;
                    (libc::CMSG_DATA(cmsg) as *mut u16).write_unaligned(self.gso[i]);
                }
            } else {
                hdr.msg_hdr.msg_control = std::ptr::null_mut();
                hdr.msg_hdr.msg_controllen = 0;
            }
        }
        let mut sent = 0;
        while sent < total {
            // SAFETY: headers[sent..total] were filled above and point at iovecs,
            // addresses and control buffers owned by `self`, and at slices the
            // caller of `push` keeps alive until this call returns.
            let rc = unsafe {
                libc::sendmmsg(
                    fd.as_raw_fd(),
                    self.headers[sent..].as_mut_ptr(),
                    (total - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc < 0 {
                let error = io::Error::last_os_error();
                self.drain(sent);
                return Err(SendError { sent, error });
            }
            sent += rc as usize;
        }
        self.clear();
        Ok(sent)
    }

    /// Forgets the first `n` messages (they were sent).
    fn drain(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        let cut = self.spans.get(n).map_or(self.iovecs.len(), |s| s.0);
        self.iovecs.drain(..cut);
        self.spans.drain(..n);
        for span in &mut self.spans {
            span.0 -= cut;
            span.1 -= cut;
        }
        self.gso.drain(..n);
        self.frames.drain(..n);
        self.addrs.rotate_left(n);
    }
}

/// Messages queued on a [`SendBatch`], borrowing their data for `'b`.
pub struct SendQueue<'q, 'b> {
    batch: &'q mut SendBatch,
    _data: std::marker::PhantomData<&'b [u8]>,
}

impl std::fmt::Debug for SendQueue<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.batch.fmt(f)
    }
}

impl<'b> SendQueue<'_, 'b> {
    /// Queues one message to `dst` made of `slices`; with `gso = Some(size)` the
    /// kernel cuts it into datagrams of `size` bytes (the last may be shorter).
    /// The caller checks [`SendQueue::has_room`] first.
    /// `frames` is how many inner frames the message carries (its segments), so
    /// a failed send is accounted frame by frame. Returns false, queuing
    /// nothing, when the batch is full (check [`SendQueue::has_room`] first).
    #[must_use]
    pub fn push(
        &mut self,
        dst: SocketAddrV4,
        slices: &[&'b [u8]],
        gso: Option<u16>,
        frames: u32,
    ) -> bool {
        if !self.batch.has_room(slices.len()) {
            return false;
        }
        self.batch.push_raw(dst, slices, gso, frames);
        true
    }

    pub fn has_room(&self, slices: usize) -> bool {
        self.batch.has_room(slices)
    }

    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// Sends what is queued; see [`SendError`] for partial sends.
    pub fn flush(&mut self, fd: &impl AsRawFd) -> Result<usize, SendError> {
        self.batch.flush(fd)
    }

    /// Forgets the first queued message (after an error that would repeat);
    /// returns how many frames it carried.
    pub fn skip_first(&mut self) -> u32 {
        let frames = self.batch.frames.first().copied().unwrap_or(0);
        self.batch.drain(1);
        frames
    }

    /// Forgets every queued message; returns how many frames they carried.
    pub fn skip_all(&mut self) -> u32 {
        let frames = self.batch.frames.iter().sum();
        self.batch.clear();
        frames
    }
}

impl Drop for SendQueue<'_, '_> {
    fn drop(&mut self) {
        self.batch.clear();
    }
}

/// Owners of one file descriptor for their whole life.
///
/// # Safety
/// An implementor must own its descriptor and return the same one from every
/// `as_raw_fd` call until it is dropped (what `AsyncFd::register` requires).
pub unsafe trait OwnsFd: AsRawFd {}
// SAFETY: a `File` owns its descriptor and never changes it.
unsafe impl OwnsFd for std::fs::File {}
// SAFETY: a `Socket` owns its descriptor and never changes it.
unsafe impl OwnsFd for socket2::Socket {}

/// nix's inotify instance, with the raw descriptor tokio's reactor takes
/// (the embedded lease store watches its directory with it).
#[derive(Debug)]
pub struct InotifyFd(pub nix::sys::inotify::Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        use std::os::fd::AsFd;
        self.0.as_fd().as_raw_fd()
    }
}
// SAFETY: an `Inotify` owns its descriptor (an `OwnedFd`) and never changes it.
unsafe impl OwnsFd for InotifyFd {}

/// Registers `inner` with the tokio reactor.
pub fn register<T: OwnsFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `OwnsFd` (an unsafe trait) promises the descriptor is owned and stable
    // for the value's whole life, which is what `register` requires.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(io::Error::from)
}

/// The global allocator of `weftd` (and of the benchmarks): the system
/// allocator, counting allocations, separately for dataplane threads, so the
/// claim "no allocation per packet" is measured, not assumed (metric
/// `weft_dataplane_allocations_total`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountingAllocator;

static ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static DATAPLANE_ALLOCATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates.
    static IN_DATAPLANE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count_allocation() {
    ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if IN_DATAPLANE.try_with(|c| c.get()).unwrap_or(false) {
        DATAPLANE_ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Marks the calling thread as a dataplane thread for allocation counting.
pub fn mark_dataplane_thread() {
    IN_DATAPLANE.with(|c| c.set(true));
}

/// Allocations made so far by every thread (when [`CountingAllocator`] is the global allocator).
pub fn allocations() -> u64 {
    ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Allocations made so far by dataplane threads.
pub fn dataplane_allocations() -> u64 {
    DATAPLANE_ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
}

// SAFETY: every method forwards to `std::alloc::System` with the caller's
// arguments unchanged, so the allocator contract is `System`'s; counting
// touches only atomics and a const thread-local, neither of which allocates.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: forwarded unchanged; `ptr` came from this allocator, i.e. from `System`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        count_allocation();
        // SAFETY: forwarded unchanged; `ptr` came from `System` with `layout`.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
