//! Batched `recvmmsg` and `sendmmsg` with per-message control data (the
//! UDP GRO segment size and drop counts on receive, the UDP GSO segment
//! size on send), over header arrays allocated once and reused.
//!
//! Written here rather than taken from `nix` or `quinn-udp`: the data path
//! needs scatter-gather sends (payload slices that point into the TAP read
//! buffer, so a frame is never copied in userspace), per-message GSO sizes,
//! and header arrays reused for every batch. `quinn-udp` sends one contiguous
//! buffer per call; `nix`'s `MultiHeaders` cannot mix iovec counts per message.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// Room for a socket address of either family: a `sockaddr_in6`, which a
/// `sockaddr_in` fits in (both start with the family).
type RawAddr = libc::sockaddr_in6;

/// Writes `addr` into `out` as the kernel reads it; returns its length.
fn write_sockaddr(addr: SocketAddr, out: &mut RawAddr) -> libc::socklen_t {
    match addr {
        SocketAddr::V4(a) => {
            let v4 = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: `RawAddr` (28 bytes) is larger than `sockaddr_in` (16) and
            // at least as aligned (4); the write stays inside `out`.
            unsafe { (out as *mut RawAddr).cast::<libc::sockaddr_in>().write(v4) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            *out = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo().to_be(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

/// The address the kernel wrote into `raw` (`None`: neither IPv4 nor IPv6).
fn read_sockaddr(raw: &RawAddr) -> Option<SocketAddr> {
    let family = libc::c_int::from(raw.sin6_family);
    if family == libc::AF_INET {
        // SAFETY: the kernel wrote a `sockaddr_in` (family AF_INET) at the start
        // of `raw`, which is larger and at least as aligned.
        let v4 = unsafe { (raw as *const RawAddr).cast::<libc::sockaddr_in>().read() };
        Some(SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr)),
            u16::from_be(v4.sin_port),
        )))
    } else if family == libc::AF_INET6 {
        Some(SocketAddr::V6(SocketAddrV6::new(
            Ipv6Addr::from(raw.sin6_addr.s6_addr),
            u16::from_be(raw.sin6_port),
            u32::from_be(raw.sin6_flowinfo),
            raw.sin6_scope_id,
        )))
    } else {
        None
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
    /// Source address (`None`: a family other than IPv4 and IPv6).
    pub src: Option<SocketAddr>,
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

impl From<RecvMeta> for crate::core::batch::Received {
    fn from(m: RecvMeta) -> Self {
        crate::core::batch::Received {
            src: m.src.map(|a| a.ip()),
            len: m.len,
            stride: m.stride,
            truncated: m.truncated,
            control_truncated: m.control_truncated,
        }
    }
}

/// Reusable `recvmmsg` state for up to `capacity` messages.
pub struct RecvBatch {
    headers: Vec<libc::mmsghdr>,
    iovecs: Vec<libc::iovec>,
    addrs: Vec<RawAddr>,
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
    /// Room for `capacity` messages.
    pub fn new(capacity: usize) -> RecvBatch {
        // SAFETY: all-zero is a valid (empty) value for these plain C structs.
        let zeroed_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let zeroed_addr: RawAddr = unsafe { mem::zeroed() };
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

    /// How many messages one call receives at most.
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
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut RawAddr).cast();
            hdr.msg_hdr.msg_namelen = mem::size_of::<RawAddr>() as libc::socklen_t;
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
            let src = read_sockaddr(&self.addrs[i]);
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
    addrs: Vec<RawAddr>,
    /// The length of each queued message's address.
    addr_lens: Vec<libc::socklen_t>,
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
    /// Messages sent before the error.
    pub sent: usize,
    /// The error.
    pub error: io::Error,
}

impl SendBatch {
    /// Room for `messages` messages with `iovecs` slices in all.
    pub fn new(messages: usize, iovecs: usize) -> SendBatch {
        // SAFETY: all-zero is a valid value for these plain C structs.
        let zeroed_hdr: libc::mmsghdr = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let zeroed_addr: RawAddr = unsafe { mem::zeroed() };
        SendBatch {
            headers: vec![zeroed_hdr; messages],
            iovecs: Vec::with_capacity(iovecs),
            addrs: vec![zeroed_addr; messages],
            addr_lens: vec![0; messages],
            control: vec![[0; CMSG_BUF / 8]; messages],
            spans: Vec::with_capacity(messages),
            gso: Vec::with_capacity(messages),
            frames: Vec::with_capacity(messages),
        }
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether nothing is queued.
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
    fn push_raw(&mut self, dst: SocketAddr, slices: &[&[u8]], gso: Option<u16>, frames: u32) {
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
        self.addr_lens[i] = write_sockaddr(dst, &mut self.addrs[i]);
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
            hdr.msg_hdr.msg_name = (&mut self.addrs[i] as *mut RawAddr).cast();
            hdr.msg_hdr.msg_namelen = self.addr_lens[i];
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
        self.addr_lens.rotate_left(n);
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
        dst: SocketAddr,
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

    /// Whether another message of `slices` slices fits.
    pub fn has_room(&self, slices: usize) -> bool {
        self.batch.has_room(slices)
    }

    /// Messages queued.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// Whether nothing is queued.
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
