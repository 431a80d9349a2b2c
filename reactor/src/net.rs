//! Moving a connection between shards: detach a monoio `TcpStream` from this shard's
//! event loop into a plain owned descriptor (which can travel in a message), and attach
//! it to the receiving shard's loop.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

/// Detaches `stream` from the current shard's driver. The stream must have no I/O in
/// flight (every read and write awaited to completion), as after a plain request and
/// response exchange; monoio panics otherwise, since the kernel could still be using it.
pub fn detach(stream: monoio::net::TcpStream) -> OwnedFd {
    let fd = stream.into_raw_fd();
    // SAFETY: `into_raw_fd` gave up ownership of `fd` (monoio deregistered it and will
    // not close it), so wrapping it in an `OwnedFd` makes it the sole owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Attaches a detached connection to the current shard's driver.
pub fn attach(fd: OwnedFd) -> io::Result<monoio::net::TcpStream> {
    let std = std::net::TcpStream::from(fd);
    std.set_nonblocking(true)?;
    monoio::net::TcpStream::from_std(std)
}

/// Sends what fits of `bytes` on `stream` now, without waiting (`MSG_DONTWAIT`) and
/// outside the event loop: for a last message before a close (a TLS alert), where
/// waiting for room is not worth it. Returns the bytes sent.
pub fn try_send(stream: &monoio::net::TcpStream, bytes: &[u8]) -> io::Result<usize> {
    use std::os::fd::AsRawFd;
    let fd = stream.as_raw_fd();
    // SAFETY: `fd` is the open socket `stream` owns for the whole call, and `bytes` is a
    // valid buffer of `bytes.len()` bytes that the kernel only reads.
    let n = unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}
