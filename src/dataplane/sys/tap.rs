//! The TAP device's ioctls: opening a queue (`TUNSETIFF`), persistence,
//! offloads and the virtio header size; and interface names by index.

use std::ffi::CStr;
use std::io;
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
