//! The wakeup of a shard's mailbox: written by other threads only while the mailbox
//! sleeps, read by the sleeping shard through its own event loop.
//!
//! On io_uring the doorbell is an eventfd read by the shard's ring (a `Read` op that the
//! kernel parks until the counter is non-zero). monoio's epoll driver only polls the
//! socket types it owns, so there the doorbell is a non-blocking `AF_UNIX` socket pair
//! whose read end is a monoio `UnixStream`. Both sides of the protocol are the same.
//!
//! The same doorbell is offered outside the reactor as a [`Bell`]: a wakeup any thread
//! rings and one task on a shard awaits (the store's completions, a backup's chunks).
//!
//! Protocol of the mailbox (Dekker-style, with a `SeqCst` fence on each side so at least one side sees
//! the other's write):
//! * receiver: `sleeping = true`; fence; re-check every inbound queue; if one is
//!   non-empty, `sleeping = false` and go on draining; else await the fd.
//! * sender: push the message; fence; if `sleeping` swap it to false and, if it was
//!   true, write the fd. Only the first sender after a sleep pays for the syscall.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::driver::IoDriver;

/// The shared half of a doorbell: what other threads need to wake the owner.
pub(crate) struct Doorbell {
    sleeping: AtomicBool,
    kind: IoDriver,
    /// eventfd (io_uring) or the write end of a socket pair (epoll).
    write_fd: OwnedFd,
    /// Wakeups actually written (syscalls paid), for the metrics.
    pub(crate) rings: AtomicU64,
}

/// The owner's half: the fd its event loop reads.
pub(crate) enum DoorbellReader {
    Uring(OwnedFd),
    Epoll(OwnedFd),
}

impl Doorbell {
    /// Creates the doorbell of a shard that will run `kind`.
    pub(crate) fn new(kind: IoDriver) -> io::Result<(Doorbell, DoorbellReader)> {
        match kind {
            IoDriver::Uring => {
                // SAFETY: eventfd(2) takes no pointers; the return value is checked below.
                let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: `fd` is a fresh descriptor that nothing else owns.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                let reader = owned.try_clone()?;
                Ok((Self::with_fd(kind, owned), DoorbellReader::Uring(reader)))
            }
            IoDriver::Epoll => {
                let mut fds = [0 as RawFd; 2];
                // SAFETY: `fds` is a valid array of two ints for socketpair(2) to fill.
                let rc = unsafe {
                    libc::socketpair(
                        libc::AF_UNIX,
                        libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                        0,
                        fds.as_mut_ptr(),
                    )
                };
                if rc < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: both descriptors are fresh and owned by nobody else.
                let (r, w) =
                    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
                Ok((Self::with_fd(kind, w), DoorbellReader::Epoll(r)))
            }
        }
    }

    fn with_fd(kind: IoDriver, write_fd: OwnedFd) -> Self {
        Doorbell {
            sleeping: AtomicBool::new(false),
            kind,
            write_fd,
            rings: AtomicU64::new(0),
        }
    }

    /// Receiver: announce the intent to sleep. The caller must re-check its queues after
    /// this and call [`Doorbell::awake`] if it finds work.
    pub(crate) fn prepare_sleep(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Receiver: it is running again (found work, or was woken).
    pub(crate) fn awake(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// Sender: called after publishing a message. Writes the fd only if the receiver
    /// sleeps, and only once per sleep.
    #[inline]
    pub(crate) fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::AcqRel) {
            self.write();
        }
    }

    /// Unconditional wakeup (used by the control thread for shutdown).
    pub(crate) fn ring_always(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        self.write();
    }

    fn write(&self) {
        self.rings.fetch_add(1, Ordering::Relaxed);
        let fd = self.write_fd.as_raw_fd();
        let one = 1u64.to_ne_bytes();
        let len = match self.kind {
            IoDriver::Uring => 8, // an eventfd takes exactly one u64
            IoDriver::Epoll => 1,
        };
        // SAFETY: `fd` is open for the life of `self`; `one` is a valid buffer of at least
        // `len` bytes. The result is ignored on purpose: EAGAIN on a full socket pair or
        // a saturated eventfd means a wakeup is already pending, which is all we need.
        let _ = unsafe { libc::write(fd, one.as_ptr().cast(), len) };
    }
}

impl DoorbellReader {
    /// Turns the reader into a future-producing waiter on the current monoio runtime.
    pub(crate) fn into_waiter(self) -> io::Result<DoorbellWaiter> {
        match self {
            DoorbellReader::Uring(fd) => {
                // An eventfd wrapped for monoio's `Read` op; no filesystem I/O happens.
                let file = std::fs::File::from(fd);
                Ok(DoorbellWaiter::Uring(
                    monoio::fs::File::from_std(file)?,
                    Some(vec![0u8; 8]),
                ))
            }
            DoorbellReader::Epoll(fd) => {
                let s = std::os::unix::net::UnixStream::from(fd);
                Ok(DoorbellWaiter::Epoll(
                    monoio::net::UnixStream::from_std(s)?,
                    Some(vec![0u8; 64]),
                ))
            }
        }
    }
}

/// Waits for a doorbell ring on the shard's own event loop.
pub(crate) enum DoorbellWaiter {
    Uring(monoio::fs::File, Option<Vec<u8>>),
    Epoll(monoio::net::UnixStream, Option<Vec<u8>>),
}

impl DoorbellWaiter {
    /// Completes when the doorbell has been rung at least once since the last wait.
    pub(crate) async fn wait(&mut self) -> io::Result<()> {
        use monoio::io::AsyncReadRent;
        match self {
            DoorbellWaiter::Uring(file, slot) => {
                let buf = slot.take().unwrap_or_else(|| vec![0u8; 8]);
                let (res, buf) = file.read_at(buf, 0).await;
                *slot = Some(buf);
                res.map(|_| ())
            }
            DoorbellWaiter::Epoll(stream, slot) => {
                let buf = slot.take().unwrap_or_else(|| vec![0u8; 64]);
                let (res, buf) = stream.read(buf).await;
                *slot = Some(buf);
                match res {
                    Ok(0) => Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "doorbell closed",
                    )),
                    Ok(_) => Ok(()),
                    Err(e) => Err(e),
                }
            }
        }
    }
}

/// A wakeup any thread rings and one task on a shard awaits: the mailbox's doorbell
/// (an eventfd on io_uring, a socket pair on epoll) for code outside the reactor, such
/// as a storage thread that publishes completions. Every ring writes (the waiter is a
/// task, not the sleeping shard: there is no sleep protocol to skip it). A ring never
/// blocks: a full socket or a saturated eventfd already holds a pending wakeup.
///
/// Dropping the `Bell` ends its waiter: the waiter wakes, and its next
/// [`BellWaiter::wait`] fails with `UnexpectedEof` (a socket pair sees the close; an
/// eventfd cannot, so a flag says it).
pub struct Bell {
    door: Doorbell,
    closed: Arc<AtomicBool>,
}

/// The task's half of a [`Bell`]; lives on the shard (monoio runtime) that made it.
pub struct BellWaiter {
    waiter: DoorbellWaiter,
    closed: Arc<AtomicBool>,
}

impl Bell {
    /// A bell and its waiter for a runtime running `driver`. Call it on that runtime's
    /// thread: the waiter registers its descriptor there.
    pub fn new(driver: IoDriver) -> io::Result<(Bell, BellWaiter)> {
        let (door, reader) = Doorbell::new(driver)?;
        let closed = Arc::new(AtomicBool::new(false));
        Ok((
            Bell {
                door,
                closed: closed.clone(),
            },
            BellWaiter {
                waiter: reader.into_waiter()?,
                closed,
            },
        ))
    }

    /// Wakes the waiter (or makes its next wait return at once).
    pub fn ring(&self) {
        self.door.write();
    }

    /// Rings written so far.
    pub fn rings(&self) -> u64 {
        self.door.rings.load(Ordering::Relaxed)
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        self.closed.store(true, Ordering::Release);
        self.door.write();
    }
}

impl std::fmt::Debug for Bell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bell")
            .field("driver", &self.door.kind)
            .field("rings", &self.rings())
            .finish()
    }
}

impl BellWaiter {
    /// Completes when the bell has rung at least once since the last wait; fails with
    /// `UnexpectedEof` once the bell is dropped and its last ring was taken.
    pub async fn wait(&mut self) -> io::Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the bell was dropped",
            ));
        }
        self.waiter.wait().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(driver: IoDriver, f: impl std::future::Future<Output = ()>) {
        crate::driver::block_on(driver, 64, f).unwrap();
    }

    fn drivers() -> Vec<IoDriver> {
        let mut d = vec![IoDriver::Epoll];
        if crate::driver::resolve(crate::driver::DriverChoice::Uring, 64).is_ok() {
            d.push(IoDriver::Uring);
        }
        d
    }

    #[test]
    fn a_bell_rung_from_another_thread_wakes_its_waiter_and_its_drop_ends_it() {
        for driver in drivers() {
            on(driver, async move {
                let (bell, mut waiter) = Bell::new(driver).unwrap();
                let t = std::thread::spawn(move || {
                    // Far more rings than a socket buffer holds: never blocks.
                    for _ in 0..100_000 {
                        bell.ring();
                    }
                    bell
                });
                waiter.wait().await.unwrap();
                let bell = t.join().unwrap();
                assert!(bell.rings() >= 100_000, "{driver}");
                drop(bell);
                // Whatever rings were pending are taken; then the waiter ends.
                let mut ended = false;
                for _ in 0..3 {
                    if waiter.wait().await.is_err() {
                        ended = true;
                        break;
                    }
                }
                assert!(
                    ended,
                    "{driver}: the waiter must end after its bell is dropped"
                );
            });
        }
    }
}
