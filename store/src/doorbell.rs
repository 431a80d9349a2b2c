//! A ready-made [`Doorbell`] for runtimes the store knows nothing about: a non-blocking
//! Unix socket pair. The storage thread writes one byte per ring; the shard reads the
//! other end in its event loop (monoio: `UnixStream::from_std`) and calls
//! [`ShardLink::on_doorbell`](crate::ShardLink::on_doorbell) after each read. A reactor
//! with its own cross-thread wakeup (an eventfd) can implement [`Doorbell`] on that
//! instead.

use std::io::Write as _;
use std::os::unix::net::UnixStream;

use crate::thread::Doorbell;

/// The storage thread's end of a socket-pair doorbell.
#[derive(Debug)]
pub struct SocketDoorbell(UnixStream);

impl SocketDoorbell {
    /// A doorbell and the non-blocking read end the shard waits on.
    pub fn pair() -> std::io::Result<(SocketDoorbell, UnixStream)> {
        let (w, r) = UnixStream::pair()?;
        w.set_nonblocking(true)?;
        r.set_nonblocking(true)?;
        Ok((SocketDoorbell(w), r))
    }
}

impl Doorbell for SocketDoorbell {
    fn ring(&self) {
        // Never blocks: when the socket buffer is full it already holds unread rings, so
        // the shard will wake anyway (WouldBlock is ignored).
        let _ = (&self.0).write(&[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn rings_are_readable_and_a_full_buffer_does_not_block() {
        let (bell, mut r) = SocketDoorbell::pair().unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(
            r.read(&mut buf).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock
        );
        bell.ring();
        assert_eq!(r.read(&mut buf).unwrap(), 1);
        // Far more rings than a socket buffer holds: returns, never blocks.
        for _ in 0..1_000_000 {
            bell.ring();
        }
        assert!(r.read(&mut buf).unwrap() > 0);
    }
}
