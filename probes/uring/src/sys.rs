//! Everything that needs `unsafe`: the TAP ioctl, clocks, CPU affinity and
//! the io_uring submissions, whose buffers the kernel writes to after the
//! call that submitted them has returned.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

/// Opens TAP device `name` (no packet information, no virtio header),
/// non-blocking.
pub fn open_tap(name: &str) -> io::Result<File> {
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "TAP name too long",
        ));
    }
    // SAFETY: the path is a NUL-terminated literal; open has no other inputs.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened here and nothing else owns it.
    let tap = unsafe { File::from_raw_fd(fd) };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq` (40 bytes), whose
    // name and flags fields `IfReq` lays out the same way.
    let rc = unsafe { libc::ioctl(tap.as_raw_fd(), libc::TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tap)
}

/// CPU time of the whole process: its threads and the io_uring workers the
/// kernel starts for it, which belong to its thread group.
pub fn process_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "cpu out of range",
        ));
    }
    // SAFETY: CPU_SET writes inside `set`; `cpu` is below CPU_SETSIZE (checked).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Page-aligned anonymous memory for the provided-buffer ring.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: an anonymous private mapping touches no existing memory.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from mmap and the ring that used them is
        // gone (see the field order of `Ring`).
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

const BUF_GROUP: u16 = 1;
const MULTISHOT: u64 = u64::MAX;
const CANCEL: u64 = u64::MAX - 1;

/// One io_uring with `depth` frame buffers, registered twice: as fixed
/// buffers (for `ReadFixed`) and as a provided-buffer ring (for multishot
/// reads). Every method waits for all it submitted before returning, so no
/// operation outlives the borrow of the buffers it writes to.
pub struct Ring {
    // Dropped first: the kernel lets go of the buffers and the ring memory.
    ring: IoUring,
    bufs: Vec<Box<[u8]>>,
    pbuf: Mapping,
    pbuf_tail: u16,
}

impl Ring {
    pub fn new(depth: usize, frame: usize) -> io::Result<Ring> {
        let depth = depth.next_power_of_two();
        let entries = u16::try_from(depth)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "depth above 32768"))?;
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_coop_taskrun()
            .build(depth as u32 * 2)?;
        let bufs: Vec<Box<[u8]>> = (0..depth)
            .map(|_| vec![0u8; frame].into_boxed_slice())
            .collect();
        let iovecs: Vec<libc::iovec> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: b.len(),
            })
            .collect();
        // SAFETY: the buffers live in `bufs` as long as the ring (dropped first).
        unsafe { ring.submitter().register_buffers(&iovecs)? };
        let pbuf = Mapping::new((depth * std::mem::size_of::<types::BufRingEntry>()).max(4096))?;
        // SAFETY: `pbuf` is page-aligned, large enough for `entries` entries and
        // outlives the ring.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(pbuf.ptr as u64, entries, BUF_GROUP, 0)?
        };
        let mut ring = Ring {
            ring,
            bufs,
            pbuf,
            pbuf_tail: 0,
        };
        for bid in 0..entries {
            ring.provide(bid);
        }
        ring.publish_tail();
        Ok(ring)
    }

    pub fn depth(&self) -> usize {
        self.bufs.len()
    }

    /// The bytes of buffer `index` (to check what a read returned).
    pub fn buffer(&self, index: usize) -> &[u8] {
        &self.bufs[index]
    }

    /// Puts buffer `bid` at the ring's tail (made visible by `publish_tail`).
    fn provide(&mut self, bid: u16) {
        let mask = self.bufs.len() - 1;
        let base = self.pbuf.ptr.cast::<types::BufRingEntry>();
        let buf = &mut self.bufs[bid as usize];
        // SAFETY: the slot index is masked to the ring's size; the kernel only
        // reads slots between its head and the published tail, and this slot
        // is past the tail until `publish_tail`.
        let entry = unsafe { &mut *base.add(self.pbuf_tail as usize & mask) };
        entry.set_addr(buf.as_mut_ptr() as u64);
        entry.set_len(buf.len() as u32);
        entry.set_bid(bid);
        self.pbuf_tail = self.pbuf_tail.wrapping_add(1);
    }

    fn publish_tail(&self) {
        let base = self.pbuf.ptr.cast::<types::BufRingEntry>();
        // SAFETY: the tail field overlays the first entry's reserved field,
        // which the kernel reads atomically; this is the only writer.
        let tail = unsafe { &*(types::BufRingEntry::tail(base) as *const AtomicU16) };
        tail.store(self.pbuf_tail, Ordering::Release);
    }

    /// Reads `total` frames from `fd`, keeping `depth` reads in flight
    /// (`ReadFixed` on the registered buffers when `fixed`). Returns the
    /// bytes read and the index of the buffer the last frame landed in.
    pub fn read(&mut self, fd: RawFd, total: usize, fixed: bool) -> io::Result<(u64, usize)> {
        let depth = self.bufs.len().min(total);
        let (submitter, mut sq, mut cq) = self.ring.split();
        let (mut submitted, mut done, mut bytes, mut last) = (0, 0, 0u64, 0);
        let mut failed = None;
        let read = |i: usize, bufs: &mut [Box<[u8]>]| -> squeue::Entry {
            let buf = &mut bufs[i];
            if fixed {
                opcode::ReadFixed::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32, i as u16)
                    .build()
            } else {
                opcode::Read::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build()
            }
            .user_data(i as u64)
        };
        for i in 0..depth {
            // SAFETY: buffer `i` stays borrowed (self) until its completion is
            // reaped below; the queue has room for 2 x depth entries.
            unsafe { sq.push(&read(i, &mut self.bufs)) }.expect("queue sized for depth");
            submitted += 1;
        }
        sq.sync();
        while done < submitted {
            submitter.submit_and_wait(1)?;
            cq.sync();
            for cqe in &mut cq {
                done += 1;
                let i = cqe.user_data() as usize;
                match cqe.result() {
                    n if n >= 0 => {
                        bytes += n as u64;
                        last = i;
                    }
                    e => {
                        failed.get_or_insert(io::Error::from_raw_os_error(-e));
                    }
                }
                if submitted < total && failed.is_none() {
                    // SAFETY: as above; buffer `i` is free again.
                    unsafe { sq.push(&read(i, &mut self.bufs)) }.expect("queue sized for depth");
                    submitted += 1;
                }
            }
            sq.sync();
        }
        match failed {
            Some(e) => Err(e),
            None => Ok((bytes, last)),
        }
    }

    /// Reads `total` frames from `fd` with one multishot read into the
    /// provided-buffer ring, handing each buffer back as soon as its frame
    /// is counted; cancels the read once `total` frames arrived. Returns the
    /// bytes read.
    pub fn read_multishot(&mut self, fd: RawFd, total: usize) -> io::Result<u64> {
        // Length 0: each read takes a whole provided buffer (the kernel
        // refuses any other length here).
        let arm = opcode::ReadMulti::new(types::Fd(fd), 0, BUF_GROUP)
            .build()
            .user_data(MULTISHOT);
        let (mut done, mut bytes, mut armed, mut cancelled) = (0, 0u64, false, false);
        let mut failed = None;
        loop {
            if !armed && done < total && failed.is_none() {
                // SAFETY: the read writes only into provided buffers, which live
                // as long as the ring.
                unsafe { self.ring.submission().push(&arm) }.expect("room for one entry");
                armed = true;
            }
            if armed && !cancelled && (done >= total || failed.is_some()) {
                let cancel = opcode::AsyncCancel::new(MULTISHOT)
                    .build()
                    .user_data(CANCEL);
                // SAFETY: a cancel request refers to no buffer.
                unsafe { self.ring.submission().push(&cancel) }.expect("room for one entry");
                cancelled = true;
            }
            if !armed && (done >= total || failed.is_some()) {
                break;
            }
            self.ring.submit_and_wait(1)?;
            let mut returned = Vec::new();
            for cqe in self.ring.completion() {
                if cqe.user_data() == CANCEL {
                    continue;
                }
                if !cqueue::more(cqe.flags()) {
                    armed = false;
                    cancelled = false;
                }
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    returned.push(bid);
                }
                match cqe.result() {
                    n if n > 0 => {
                        done += 1;
                        bytes += n as u64;
                    }
                    // The ring ran dry (the read re-arms) or the cancel landed.
                    e if e == -libc::ENOBUFS || e == -libc::ECANCELED => {}
                    0 => {}
                    e => {
                        failed.get_or_insert(io::Error::from_raw_os_error(-e));
                    }
                }
            }
            for bid in returned {
                self.provide(bid);
            }
            self.publish_tail();
        }
        // The cancel's own completion may still be queued; reap what is there.
        self.ring.submit()?;
        self.ring.completion().for_each(drop);
        match failed {
            Some(e) => Err(e),
            None => Ok(bytes),
        }
    }

    /// Writes `frame` to `fd` `total` times, `depth` writes per submission.
    pub fn write(&mut self, fd: RawFd, frame: &[u8], total: usize) -> io::Result<()> {
        let depth = self.bufs.len();
        let write = opcode::Write::new(types::Fd(fd), frame.as_ptr(), frame.len() as u32).build();
        let mut left = total;
        let mut failed = None;
        while left > 0 {
            let n = left.min(depth);
            for _ in 0..n {
                // SAFETY: `frame` is borrowed for the whole call, which waits
                // for every write it submits.
                unsafe { self.ring.submission().push(&write) }.expect("queue sized for depth");
            }
            self.ring.submit_and_wait(n)?;
            for cqe in self.ring.completion() {
                if cqe.result() < 0 {
                    failed.get_or_insert(io::Error::from_raw_os_error(-cqe.result()));
                }
            }
            left -= n;
            if let Some(e) = failed {
                return Err(e);
            }
        }
        Ok(())
    }
}
