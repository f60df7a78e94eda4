//! Everything that needs `unsafe`: namespaces, CPU affinity, socket options,
//! the bpf(2) calls that load and attach the XDP program, and the AF_XDP
//! socket, whose UMEM and rings are memory shared with the kernel.
//!
//! Constants and layouts are those of /usr/include/linux/{bpf.h,if_xdp.h,
//! if_link.h} (checked against a C program's `offsetof`/`sizeof` on the
//! machine this was written on); the XDP ones come from the `libc` crate,
//! which has the same values.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

fn context(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Moves the calling thread (only it) into network namespace `name`, as
/// created by `ip netns add`.
pub fn enter_netns(name: &str) -> io::Result<()> {
    let path = format!("/run/netns/{name}");
    let ns = File::open(&path).map_err(context(format!(
        "open {path} (does namespace {name} exist? scripts/afxdp-probe.sh creates it)"
    )))?;
    // SAFETY: setns only reads the fd, which `ns` keeps open for the call.
    cvt(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) })
        .map_err(context(format!("setns into {name} (needs root)")))?;
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu out of range",
        ));
    }
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET writes inside `set`; `cpu` is below CPU_SETSIZE (checked).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    cvt(unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) }).map_err(
        context(format!("pin to CPU {cpu} (does the machine have it?)")),
    )?;
    Ok(())
}

/// The unit of /proc/stat (USER_HZ).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory inputs.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as u64 } else { 100 }
}

/// setsockopt with an int value.
pub fn set_int(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the value pointer and length describe a live c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Index of interface `name` in the calling thread's network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in interface name"))?;
    // SAFETY: `c` is NUL-terminated and outlives the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(io::Error::new(
            io::Error::last_os_error().kind(),
            format!(
                "no interface {name} in this namespace: {}",
                io::Error::last_os_error()
            ),
        ));
    }
    Ok(index)
}

/// MAC address of interface `name` in the calling thread's namespace.
pub fn mac_address(name: &str) -> io::Result<[u8; 6]> {
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    // SAFETY: plain socket creation; the result is checked.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` was just created and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR reads the name and writes ifr_hwaddr inside `req`.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) })
        .map_err(context(format!("SIOCGIFHWADDR {name}")))?;
    // SAFETY: the kernel filled the ifr_hwaddr member of the union.
    let data = unsafe { req.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data) {
        *dst = src as u8;
    }
    Ok(mac)
}

/// Waits up to `timeout_ms` for `events` on `fd`; true if any is ready.
pub fn poll(fd: BorrowedFd<'_>, events: libc::c_short, timeout_ms: i32) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd, count 1.
    match cvt(unsafe { libc::poll(&mut pfd, 1, timeout_ms) }) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// bpf(2)

// enum bpf_cmd
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
// enum bpf_map_type, bpf_prog_type, bpf_attach_type
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
/// if_link.h
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
// helper ids, return codes
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// offsetof(struct xdp_md, rx_queue_index)
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// `union bpf_attr` as bytes: sizeof is 144 in the installed header; the
/// kernel takes a shorter or longer one as long as the part it does not
/// know is zero.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 144])
    }
    fn u32(&mut self, offset: usize, v: u32) -> &mut Self {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, offset: usize, v: u64) -> &mut Self {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf_raw(cmd, attr)?;
    // SAFETY: these commands return a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bpf_raw(cmd: libc::c_long, attr: &mut Attr) -> io::Result<RawFd> {
    // SAFETY: `attr` is a valid bpf_attr of the size passed; every pointer
    // stored in it (set by the callers below) points at memory that lives
    // until this call returns.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as RawFd)
}

/// An XSKMAP of `entries` u32 keys.
pub fn create_xskmap(entries: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    // map_type @0, key_size @4, value_size @8, max_entries @12
    a.u32(0, BPF_MAP_TYPE_XSKMAP)
        .u32(4, 4)
        .u32(8, 4)
        .u32(12, entries);
    bpf(BPF_MAP_CREATE, &mut a).map_err(context(
        "BPF_MAP_CREATE XSKMAP (needs root / CAP_BPF and a kernel with CONFIG_XDP_SOCKETS)",
    ))
}

/// `map[key] = value` (for an XSKMAP, value is the AF_XDP socket's fd).
pub fn map_update(map: BorrowedFd<'_>, key: u32, value: u32) -> io::Result<()> {
    let mut a = Attr::new();
    // map_fd @0, key @8, value @16, flags @24 (BPF_ANY = 0)
    a.u32(0, map.as_raw_fd() as u32)
        .u64(8, &key as *const u32 as u64)
        .u64(16, &value as *const u32 as u64);
    bpf_raw(BPF_MAP_UPDATE_ELEM, &mut a).map_err(context(
        "BPF_MAP_UPDATE_ELEM of the XSKMAP (the AF_XDP socket must be bound and have an RX ring)",
    ))?;
    Ok(())
}

/// One `struct bpf_insn`: code, dst_reg:4 | src_reg:4 (dst in the low
/// nibble on little-endian), off, imm.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: dst | (src << 4),
        off,
        imm,
    }
}

/// Loads `return bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS)`.
pub fn load_xdp_redirect(map: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // Opcodes: BPF_LDX|BPF_MEM|BPF_W = 0x61, BPF_LD|BPF_IMM|BPF_DW = 0x18,
    // BPF_ALU64|BPF_MOV|BPF_K = 0xb7, BPF_JMP|BPF_CALL = 0x85,
    // BPF_JMP|BPF_EXIT = 0x95.
    let prog = [
        insn(0x61, 2, 1, XDP_MD_RX_QUEUE_INDEX, 0), // r2 = ctx->rx_queue_index
        insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), // r1 = map (ld_imm64, 2 slots)
        insn(0, 0, 0, 0, 0),
        insn(0xb7, 3, 0, 0, XDP_PASS), // r3 = XDP_PASS (action if no entry)
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP), // r0 = bpf_redirect_map(r1, r2, r3)
        insn(0x95, 0, 0, 0, 0),        // return r0
    ];
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let attempt = |log_level: u32, log: &mut [u8]| {
        let mut a = Attr::new();
        // prog_type @0, insn_cnt @4, insns @8, license @16, log_level @24,
        // log_size @28, log_buf @32, prog_name @48, expected_attach_type @68
        a.u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, prog.len() as u32)
            .u64(8, prog.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(68, BPF_XDP);
        a.0[48..48 + 9].copy_from_slice(b"weft_xsk\0");
        if log_level > 0 {
            a.u32(24, log_level)
                .u32(28, log.len() as u32)
                .u64(32, log.as_mut_ptr() as u64);
        }
        bpf(BPF_PROG_LOAD, &mut a)
    };
    match attempt(0, &mut []) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with the verifier's log, to say why.
            let _ = attempt(1, &mut log);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            Err(io::Error::new(
                first.kind(),
                format!(
                    "BPF_PROG_LOAD of the XDP redirect program: {first}; verifier log: {}",
                    String::from_utf8_lossy(&log[..end]).trim()
                ),
            ))
        }
    }
}

/// Attaches `prog` to `ifindex` with a BPF link (detached when the returned
/// fd closes). `flags` is XDP_FLAGS_DRV_MODE for native mode.
pub fn xdp_link(prog: BorrowedFd<'_>, ifindex: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut a = Attr::new();
    // link_create: prog_fd @0, target_ifindex @4, attach_type @8, flags @12
    a.u32(0, prog.as_raw_fd() as u32)
        .u32(4, ifindex)
        .u32(8, BPF_XDP)
        .u32(12, flags);
    bpf(BPF_LINK_CREATE, &mut a).map_err(context(format!(
        "BPF_LINK_CREATE XDP on ifindex {ifindex} flags {flags:#x} (native mode needs a driver \
         with XDP support, e.g. veth; is another XDP program attached? is the peer's MTU small enough?)"
    )))
}

// ---------------------------------------------------------------------------
// AF_XDP

/// An anonymous or kernel-provided shared mapping, unmapped on drop.
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(fd: Option<RawFd>, len: usize, offset: u64) -> io::Result<Mmap> {
        let (flags, fd) = match fd {
            Some(fd) => (libc::MAP_SHARED | libc::MAP_POPULATE, fd),
            None => (
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
            ),
        };
        // SAFETY: a fresh mapping chosen by the kernel (addr NULL) aliases
        // nothing; the result is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mmap {
            ptr: NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?,
            len,
        })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: the mapping was made by `Mmap::new` with this length and
        // no reference into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// One of the four single-producer single-consumer rings. User space is
/// the producer of fill and TX, the consumer of RX and completion.
struct Ring {
    _map: Mmap,
    producer: *const AtomicU32,
    consumer: *const AtomicU32,
    desc: *mut u8,
    size: u32,
    /// Our side's index, published with a release store.
    local: u32,
}

impl Ring {
    fn new(
        fd: RawFd,
        off: &libc::xdp_ring_offset,
        size: u32,
        elem: usize,
        pgoff: u64,
        we_consume: bool,
    ) -> io::Result<Ring> {
        let len = off.desc as usize + size as usize * elem;
        let map = Mmap::new(Some(fd), len, pgoff)?;
        let base = map.ptr.as_ptr();
        // SAFETY: the offsets come from XDP_MMAP_OFFSETS for this socket and
        // lie inside the mapping of `len` bytes; producer and consumer are
        // 4-byte aligned u32s shared with the kernel, hence atomics.
        let (producer, consumer, desc) = unsafe {
            (
                base.add(off.producer as usize) as *const AtomicU32,
                base.add(off.consumer as usize) as *const AtomicU32,
                base.add(off.desc as usize),
            )
        };
        let mut ring = Ring {
            _map: map,
            producer,
            consumer,
            desc,
            size,
            local: 0,
        };
        ring.local = if we_consume {
            ring.consumer().load(Ordering::Relaxed)
        } else {
            ring.producer().load(Ordering::Relaxed)
        };
        Ok(ring)
    }

    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into `_map`, which lives as long as `self`.
        unsafe { &*self.producer }
    }

    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as in `producer`.
        unsafe { &*self.consumer }
    }

    /// Entries the kernel produced that we have not consumed.
    fn ready(&self) -> u32 {
        self.producer()
            .load(Ordering::Acquire)
            .wrapping_sub(self.local)
    }

    /// Slots free for us to produce into.
    fn free(&self) -> u32 {
        self.size
            - self
                .local
                .wrapping_sub(self.consumer().load(Ordering::Acquire))
    }

    /// Entries we produced that the kernel has not consumed yet.
    fn pending(&self) -> u32 {
        self.local
            .wrapping_sub(self.consumer().load(Ordering::Acquire))
    }

    fn addr_at(&self, i: u32) -> u64 {
        let slot = (i & (self.size - 1)) as usize;
        // SAFETY: `slot` < size and the ring holds `size` u64s at `desc`;
        // the entry is ours (between our index and the kernel's producer).
        unsafe { (self.desc as *const u64).add(slot).read_volatile() }
    }

    fn set_addr_at(&mut self, i: u32, addr: u64) {
        let slot = (i & (self.size - 1)) as usize;
        // SAFETY: as in `addr_at`; the slot is free (checked by the caller
        // with `free`), so the kernel does not read it concurrently.
        unsafe { (self.desc as *mut u64).add(slot).write_volatile(addr) }
    }

    fn desc_at(&self, i: u32) -> libc::xdp_desc {
        let slot = (i & (self.size - 1)) as usize;
        // SAFETY: the ring holds `size` xdp_descs at `desc`; the entry is ours.
        unsafe {
            (self.desc as *const libc::xdp_desc)
                .add(slot)
                .read_volatile()
        }
    }

    fn set_desc_at(&mut self, i: u32, d: libc::xdp_desc) {
        let slot = (i & (self.size - 1)) as usize;
        // SAFETY: as in `desc_at`; the slot is free (checked by the caller).
        unsafe {
            (self.desc as *mut libc::xdp_desc)
                .add(slot)
                .write_volatile(d)
        }
    }

    /// Publishes `n` more produced entries.
    fn submit(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.producer().store(self.local, Ordering::Release);
    }

    /// Hands `n` consumed entries back.
    fn release(&mut self, n: u32) {
        self.local = self.local.wrapping_add(n);
        self.consumer().store(self.local, Ordering::Release);
    }
}

/// Sizes of an AF_XDP socket's UMEM and rings (0 = no such ring); all ring
/// sizes are powers of two.
pub struct XskConfig {
    pub frames: u32,
    pub frame_size: u32,
    pub fill: u32,
    pub completion: u32,
    pub rx: u32,
    pub tx: u32,
}

/// What `kick` saw.
pub enum Kick {
    Done,
    /// EAGAIN/EBUSY/ENOBUFS: the kernel stopped early; try again.
    Again,
}

/// An AF_XDP socket with its own UMEM.
pub struct Xsk {
    // Field order is drop order: rings and UMEM are unmapped after the
    // socket is closed.
    fd: OwnedFd,
    fill: Option<Ring>,
    completion: Option<Ring>,
    rx: Option<Ring>,
    tx: Option<Ring>,
    umem: Mmap,
    frame_size: u32,
    frames: u32,
    bound: bool,
    /// TX frames not in the kernel's hands.
    free: Vec<u64>,
}

impl Xsk {
    pub fn new(cfg: &XskConfig) -> io::Result<Xsk> {
        // SAFETY: plain socket creation; the result is checked.
        let fd = cvt(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
            .map_err(context(
                "socket(AF_XDP) (needs root and CONFIG_XDP_SOCKETS)",
            ))?;
        // SAFETY: `fd` was just created and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = cfg.frames as usize * cfg.frame_size as usize;
        let umem =
            Mmap::new(None, len, 0).map_err(context(format!("mmap of a {len}-byte UMEM")))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: len as u64,
            chunk_size: cfg.frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        // SAFETY: `reg` is a valid xdp_umem_reg of the size passed; the area
        // it names is `umem`, which the socket's owner (`Xsk`) keeps mapped
        // for as long as the socket lives.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_UMEM_REG,
                (&reg as *const libc::xdp_umem_reg).cast(),
                std::mem::size_of_val(&reg) as libc::socklen_t,
            )
        })
        .map_err(context(
            "XDP_UMEM_REG (root has CAP_IPC_LOCK; otherwise raise RLIMIT_MEMLOCK)",
        ))?;
        for (opt, size, what) in [
            (libc::XDP_UMEM_FILL_RING, cfg.fill, "fill"),
            (libc::XDP_UMEM_COMPLETION_RING, cfg.completion, "completion"),
            (libc::XDP_RX_RING, cfg.rx, "RX"),
            (libc::XDP_TX_RING, cfg.tx, "TX"),
        ] {
            if size == 0 {
                continue;
            }
            if !size.is_power_of_two() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{what} ring size {size} is not a power of two"),
                ));
            }
            set_int(fd.as_fd(), libc::SOL_XDP, opt, size as libc::c_int)
                .map_err(context(format!("setsockopt SOL_XDP {what} ring of {size}")))?;
        }
        // SAFETY: an all-zero xdp_mmap_offsets is a valid value.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut optlen = std::mem::size_of_val(&off) as libc::socklen_t;
        // SAFETY: `off` and `optlen` are valid out-pointers of the size given.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut optlen,
            )
        })
        .map_err(context("getsockopt XDP_MMAP_OFFSETS"))?;
        if optlen as usize != std::mem::size_of_val(&off) {
            return Err(io::Error::other(format!(
                "XDP_MMAP_OFFSETS returned {optlen} bytes, not the {} of a kernel with ring flags (5.4+)",
                std::mem::size_of_val(&off)
            )));
        }
        let raw = fd.as_raw_fd();
        // (size, offsets, element size, mmap offset, whether user space is
        // the consumer, name)
        type Spec<'a> = (u32, &'a libc::xdp_ring_offset, usize, u64, bool, &'a str);
        let ring = |(size, o, elem, pgoff, we_consume, what): Spec<'_>| {
            if size == 0 {
                return Ok(None);
            }
            Ring::new(raw, o, size, elem, pgoff, we_consume)
                .map(Some)
                .map_err(context(format!("mmap of the {what} ring")))
        };
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let fill = ring((
            cfg.fill,
            &off.fr,
            8,
            libc::XDP_UMEM_PGOFF_FILL_RING,
            false,
            "fill",
        ))?;
        let completion = ring((
            cfg.completion,
            &off.cr,
            8,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
            true,
            "completion",
        ))?;
        let rx = ring((
            cfg.rx,
            &off.rx,
            desc,
            libc::XDP_PGOFF_RX_RING as u64,
            true,
            "RX",
        ))?;
        let tx = ring((
            cfg.tx,
            &off.tx,
            desc,
            libc::XDP_PGOFF_TX_RING as u64,
            false,
            "TX",
        ))?;
        Ok(Xsk {
            fd,
            fill,
            completion,
            rx,
            tx,
            umem,
            frame_size: cfg.frame_size,
            frames: cfg.frames,
            bound: false,
            free: (0..cfg.frames as u64)
                .map(|i| i * cfg.frame_size as u64)
                .collect(),
        })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Frame `index` of the UMEM, to write before the socket is bound (and
    /// so before the kernel can touch any frame).
    pub fn frame_mut(&mut self, index: u32) -> io::Result<&mut [u8]> {
        if self.bound || index >= self.frames {
            return Err(io::Error::other(
                "frame_mut: only before bind, and inside the UMEM",
            ));
        }
        let start = index as usize * self.frame_size as usize;
        // SAFETY: inside the UMEM mapping (index < frames); the socket is not
        // bound, so the kernel neither reads nor writes it; `&mut self`
        // makes the slice exclusive.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(
                self.umem.ptr.as_ptr().add(start),
                self.frame_size as usize,
            )
        })
    }

    /// Binds to queue `queue` of `ifindex` with `flags` (XDP_COPY ...).
    /// An RX socket's frames all go to the fill ring first.
    pub fn bind(&mut self, ifindex: u32, queue: u32, flags: u16) -> io::Result<()> {
        if self.bound {
            return Err(io::Error::other("AF_XDP socket bound twice"));
        }
        let sa = libc::sockaddr_xdp {
            sxdp_family: libc::AF_XDP as u16,
            sxdp_flags: flags,
            sxdp_ifindex: ifindex,
            sxdp_queue_id: queue,
            sxdp_shared_umem_fd: 0,
        };
        // SAFETY: `sa` is a valid sockaddr_xdp of the size passed.
        cvt(unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of_val(&sa) as libc::socklen_t,
            )
        })
        .map_err(context(format!(
            "bind AF_XDP to ifindex {ifindex} queue {queue} flags {flags:#x} (is the interface up? \
             does it have that queue? EBUSY: another socket holds it, or a closed one has not \
             been released yet)"
        )))?;
        self.bound = true;
        // Frames arrive only once an XDP program redirects to this socket,
        // which needs it bound: the fill ring can be filled now.
        if self.rx.is_some() {
            let fill = self
                .fill
                .as_mut()
                .ok_or_else(|| io::Error::other("RX needs a fill ring"))?;
            let n = fill.free().min(self.free.len() as u32);
            for i in 0..n {
                let addr = self.free.pop().unwrap_or(0);
                fill.set_addr_at(fill.local.wrapping_add(i), addr);
            }
            fill.submit(n);
        }
        Ok(())
    }

    /// Consumes every frame on the RX ring: `f` sees each frame's bytes,
    /// then the frame goes back to the fill ring. Returns the count.
    pub fn receive(&mut self, mut f: impl FnMut(&[u8])) -> io::Result<u32> {
        let (Some(rx), Some(fill)) = (self.rx.as_mut(), self.fill.as_mut()) else {
            return Err(io::Error::other(
                "receive on a socket without RX and fill rings",
            ));
        };
        // The kernel publishes its fill-ring consumer index lazily (when it
        // next refreshes its view of the ring), so fewer slots may look free
        // than are: take only as many frames as can go back now (a fill
        // ring twice the UMEM's frame count keeps that from binding).
        let n = rx.ready().min(fill.free());
        if n == 0 {
            return Ok(0);
        }
        let umem_len = self.umem.len as u64;
        let chunk_mask = !(self.frame_size as u64 - 1);
        for i in 0..n {
            let d = rx.desc_at(rx.local.wrapping_add(i));
            if d.addr + d.len as u64 > umem_len
                || (d.addr & chunk_mask) != ((d.addr + d.len as u64 - 1) & chunk_mask)
            {
                return Err(io::Error::other(format!(
                    "RX descriptor outside its UMEM chunk: addr {} len {}",
                    d.addr, d.len
                )));
            }
            // SAFETY: the descriptor lies inside one chunk of the UMEM
            // (checked); between the kernel's RX producer and our release
            // the frame belongs to user space, so the kernel does not write
            // it while `f` reads it.
            let frame = unsafe {
                std::slice::from_raw_parts(
                    self.umem.ptr.as_ptr().add(d.addr as usize),
                    d.len as usize,
                )
            };
            f(frame);
            fill.set_addr_at(fill.local.wrapping_add(i), d.addr & chunk_mask);
        }
        rx.release(n);
        fill.submit(n);
        Ok(n)
    }

    /// Puts up to `max` free frames on the TX ring, each `len` bytes long
    /// (their contents written with `frame_mut` before bind). Returns how
    /// many.
    pub fn transmit(&mut self, max: u32, len: u32) -> u32 {
        let Some(tx) = self.tx.as_mut() else { return 0 };
        let n = max.min(tx.free()).min(self.free.len() as u32);
        for i in 0..n {
            let addr = self.free.pop().unwrap_or(0);
            tx.set_desc_at(
                tx.local.wrapping_add(i),
                libc::xdp_desc {
                    addr,
                    len,
                    options: 0,
                },
            );
        }
        tx.submit(n);
        n
    }

    /// TX descriptors the kernel has not taken yet.
    pub fn tx_pending(&self) -> u32 {
        self.tx.as_ref().map_or(0, Ring::pending)
    }

    /// Free TX frames.
    pub fn tx_free(&self) -> usize {
        self.free.len()
    }

    /// Takes back the frames the kernel completed; returns how many.
    pub fn complete(&mut self) -> u32 {
        let Some(cr) = self.completion.as_mut() else {
            return 0;
        };
        let n = cr.ready();
        for i in 0..n {
            self.free.push(cr.addr_at(cr.local.wrapping_add(i)));
        }
        cr.release(n);
        n
    }

    /// sendto(MSG_DONTWAIT): makes the kernel send what is on the TX ring.
    pub fn kick(&self) -> io::Result<Kick> {
        // SAFETY: no buffer and no address: the call only wakes the socket.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc >= 0 {
            return Ok(Kick::Done);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::EINTR) => Ok(Kick::Again),
            _ => Err(io::Error::new(
                e.kind(),
                format!("sendto kick of the AF_XDP socket: {e}"),
            )),
        }
    }

    /// XDP_STATISTICS.
    pub fn statistics(&self) -> io::Result<libc::xdp_statistics> {
        // SAFETY: an all-zero xdp_statistics is a valid value.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of_val(&st) as libc::socklen_t;
        // SAFETY: `st` and `len` are valid out-pointers of the size given.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut st as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        })
        .map_err(context("getsockopt XDP_STATISTICS"))?;
        Ok(st)
    }
}
