//! Registering descriptors with the tokio reactor.

use std::io;
use std::os::fd::AsRawFd;

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

/// Registers `inner` with the tokio reactor.
pub fn register<T: OwnsFd>(inner: T) -> io::Result<tokio::io::unix::AsyncFd<T>> {
    // SAFETY: `OwnsFd` (an unsafe trait) promises the descriptor is owned and stable
    // for the value's whole life, which is what `register` requires.
    unsafe { tokio::io::unix::AsyncFd::register(inner) }.map_err(io::Error::from)
}
