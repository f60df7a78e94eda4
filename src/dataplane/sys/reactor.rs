//! Registering descriptors with the tokio reactor.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

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
