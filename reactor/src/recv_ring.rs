//! Multishot receive for a shard's connections (issue 14): one `RECV` kept armed per
//! connection (`IORING_RECV_MULTISHOT`) on the shard's own io_uring, the kernel picking
//! each buffer from a ring of buffers the shard provides (`IORING_REGISTER_PBUF_RING`).
//!
//! Why: with monoio's one-shot `read`, every request of a keep-alive connection costs a
//! `recv` that finds nothing, an internal poll arm and a retry; a multishot receive stays
//! armed, and the buffers belong to the shard rather than one per idle connection.
//!
//! How it fits monoio: monoio 0.2 has no such op, so the vendored monoio has one hook
//! (`monoio::foreign`, vendor/monoio/README.chatixia.md): our submissions go onto its
//! ring and out with its next `io_uring_enter`; its completion pass hands ours to
//! [`on_completion`], which copies each received chunk into its connection's inbox,
//! gives the buffer straight back to the kernel and wakes the connection's task. (A
//! second ring bridged into monoio by an eventfd was measured first: it cost what it
//! saved. docs/BENCHMARKS.md, issue 14.) Arming and cancelling happen from tasks; the
//! completion pass never submits (monoio's ring is borrowed there), so what it decides
//! (arm again after ENOBUFS, pause a full inbox) is done by the connection's task or by
//! the shard's small maintenance task.
//!
//! Bounds: [`BUF_COUNT`] buffers of [`BUF_SIZE`] bytes per shard (1 MiB); a connection's
//! inbox reaching [`INBOX_BYTES_MAX`] pauses its receive (cancelled, and armed again once
//! its task has taken the bytes), so a client that sends while its task is blocked
//! (writing to it, or waiting on another shard) meets TCP backpressure as with one-shot
//! reads; the inbox then holds at most that bound plus two completion passes of buffers.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::task::{Context, Poll, Waker};

use io_uring::{cqueue, opcode, types};
use monoio::foreign;
use slab::Slab;

/// Provided buffers per shard, a power of two (the buffer ring's size). Each buffer is
/// copied out and handed back in the completion pass that delivers it, so they are only
/// in the kernel's hands between a receive and the next pass; when they run out, a
/// connection's receive ends with ENOBUFS and its task arms it again.
pub const BUF_COUNT: u16 = 256;

/// Bytes per provided buffer: one receive takes at most this much (4 KiB holds a typical
/// API request or a burst of signaling frames; larger bodies take several completions).
pub const BUF_SIZE: usize = 4096;

/// Bytes a connection's inbox may hold before its receive is paused (see the module
/// comment): 64 KiB, well above what one pass of a connection task consumes (a request
/// head, or a read's worth of frames). The pause is decided in a completion pass and
/// its cancel goes out with the next submission, and a pass may deliver up to the
/// whole buffer ring to one connection, so an inbox holds at most this plus two
/// passes' worth, 2 × `BUF_COUNT` × `BUF_SIZE` (2 MiB).
pub const INBOX_BYTES_MAX: usize = 64 * 1024;

/// Buffer group id of the shard's buffer ring.
const BGID: u16 = 0x6378;

/// user_data of a receive: `RECV_TAG | slot key`; of a cancel: `CANCEL_TAG | slot key`.
const RECV_TAG: u64 = foreign::FOREIGN_USERDATA_MIN;
const CANCEL_TAG: u64 = foreign::FOREIGN_USERDATA_MIN | (1 << 40);
const KEY_MASK: u64 = (1 << 40) - 1;

/// One connection's receive state.
struct Slot {
    fd: RawFd,
    inbox: Vec<u8>,
    /// The peer closed its side (a zero-byte receive).
    eof: bool,
    /// The receive failed (errno), other than cancellation and ENOBUFS.
    err: Option<i32>,
    /// A multishot receive is in the kernel (its final completion has not arrived).
    armed: bool,
    /// The inbox is full: cancelled (or about to be); armed again once it drains.
    paused: bool,
    /// `stop` was asked: do not arm again.
    stopping: bool,
    /// The handle is gone: free the slot at the final completion.
    orphan: bool,
    waker: Option<Waker>,
}

impl Slot {
    fn ended(&self) -> bool {
        self.eof || self.err.is_some() || self.stopping || self.orphan
    }
}

struct Inner {
    slots: Slab<Slot>,
    /// The provided buffers, `BUF_COUNT` × `BUF_SIZE` bytes. Written by the kernel, read
    /// here only for a buffer whose completion arrived and before it is handed back.
    /// Leaked on purpose (1 MiB per shard, for the process's life): when a shard's
    /// runtime ends, the kernel tears its ring down asynchronously, and no receive may
    /// ever find its buffer freed.
    bufs: *mut u8,
    /// The buffer ring's entries (shared with the kernel).
    br: BufRing,
    /// Local copy of the buffer ring's tail (published with a release store).
    br_tail: u16,
    /// Slots whose receive the completion pass decided to cancel (a full inbox); the
    /// maintenance task submits the cancels.
    to_cancel: Vec<usize>,
    /// The maintenance task, while it waits.
    maintenance: Option<Waker>,
}

/// An anonymous mapping holding the buffer ring's entries.
struct BufRing {
    base: *mut types::BufRingEntry,
    len: usize,
}

impl BufRing {
    fn new(entries: u16) -> io::Result<BufRing> {
        let len = entries as usize * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint; the result is
        // checked before use and unmapped in `Drop`.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(BufRing {
            base: p.cast(),
            len,
        })
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are the mapping made in `new`, unmapped once here. The
        // ring is thread-local to the shard and lives until the thread ends, after the
        // runtime (and its io_uring) is gone.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

impl Inner {
    /// Hands buffer `bid` back to the kernel (visible after [`Inner::publish`]).
    fn recycle(&mut self, bid: u16) {
        let idx = (self.br_tail & (BUF_COUNT - 1)) as usize;
        let addr = self.bufs as u64 + bid as u64 * BUF_SIZE as u64;
        // SAFETY: `idx < BUF_COUNT`, inside the mapping; the kernel reads entries only
        // up to the published tail, and this one is past it until `publish`.
        unsafe {
            let e = &mut *self.br.base.add(idx);
            e.set_addr(addr);
            e.set_len(BUF_SIZE as u32);
            e.set_bid(bid);
        }
        self.br_tail = self.br_tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail is the reserved u16 of the first entry of the mapping, which
        // lives as long as `self`; the kernel reads it concurrently, so it is stored
        // atomically, with release ordering after the entries were written.
        unsafe {
            let tail = types::BufRingEntry::tail(self.br.base) as *const AtomicU16;
            (*tail).store(self.br_tail, Ordering::Release);
        }
    }

    /// One completion of ours (from monoio's completion pass: no submissions here).
    fn complete(&mut self, cqe: &cqueue::Entry) {
        let ud = cqe.user_data();
        if ud & CANCEL_TAG == CANCEL_TAG {
            return;
        }
        let key = (ud & KEY_MASK) as usize;
        let res = cqe.result();
        let flags = cqe.flags();
        if let Some(bid) = cqueue::buffer_select(flags).filter(|&b| b < BUF_COUNT) {
            if res > 0 {
                if let Some(slot) = self.slots.get_mut(key) {
                    if !slot.orphan {
                        let len = (res as usize).min(BUF_SIZE);
                        // SAFETY: buffer `bid` lies inside the leaked allocation
                        // (`bid < BUF_COUNT`, `len <= BUF_SIZE`); its completion says the
                        // kernel has finished writing it, and it is not handed back to the
                        // kernel until after this copy.
                        let data = unsafe {
                            std::slice::from_raw_parts(self.bufs.add(bid as usize * BUF_SIZE), len)
                        };
                        slot.inbox.extend_from_slice(data);
                    }
                }
            }
            self.recycle(bid);
            self.publish();
        }
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        if res == 0 {
            slot.eof = true;
        } else if res < 0 && res != -libc::ECANCELED && res != -libc::ENOBUFS {
            slot.err = Some(-res);
        }
        if !cqueue::more(flags) {
            slot.armed = false;
            if slot.orphan {
                self.slots.remove(key);
                return;
            }
            // Not ended: ENOBUFS, a pause, or the kernel's own reasons; the task arms it
            // again when it next looks (after taking the inbox, if paused).
        } else if !slot.paused && !slot.ended() && slot.inbox.len() >= INBOX_BYTES_MAX {
            slot.paused = true;
            self.to_cancel.push(key);
            if let Some(w) = self.maintenance.take() {
                w.wake();
            }
        }
        if let Some(w) = self.slots.get_mut(key).and_then(|s| s.waker.take()) {
            w.wake();
        }
    }
}

thread_local! {
    static CURRENT: RefCell<Option<RecvRing>> = const { RefCell::new(None) };
    /// Completions that arrived while `Inner` was borrowed (see `on_completion`).
    static STASH: RefCell<Vec<cqueue::Entry>> = const { RefCell::new(Vec::new()) };
}

/// monoio's completion pass hands our completions here.
fn on_completion(cqe: &cqueue::Entry) {
    CURRENT.with(|c| {
        if let Some(rr) = c.borrow().as_ref() {
            match rr.inner.try_borrow_mut() {
                Ok(mut inner) => {
                    drain_stash(&mut inner);
                    inner.complete(cqe);
                }
                // No code path holds the borrow across a monoio call that can run the
                // completion pass (reviewed, and probed by forcing a pass before every
                // push); should one ever do so, the completion waits in the stash for
                // the next one rather than being lost.
                Err(_) => STASH.with(|s| s.borrow_mut().push(cqe.clone())),
            }
        }
    });
}

/// Applies completions that arrived while the state was borrowed.
fn drain_stash(inner: &mut Inner) {
    let stashed = STASH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    for cqe in &stashed {
        inner.complete(cqe);
    }
}

/// Submits `sqe` (ours: a receive on a slot's fd, or a cancel by user_data).
fn submit(sqe: io_uring::squeue::Entry) -> io::Result<()> {
    // SAFETY: receives reference only the buffer ring registered for the shard's life;
    // cancels reference nothing; user_data is in the foreign range (RECV_TAG/CANCEL_TAG);
    // callers are tasks, never the completion pass.
    unsafe { foreign::push(&sqe) }
}

fn recv_sqe(fd: RawFd, key: usize) -> io_uring::squeue::Entry {
    opcode::RecvMulti::new(types::Fd(fd), BGID)
        .build()
        .user_data(RECV_TAG | key as u64)
}

fn cancel_sqe(key: usize) -> io_uring::squeue::Entry {
    opcode::AsyncCancel::new(RECV_TAG | key as u64)
        .build()
        .user_data(CANCEL_TAG | key as u64)
}

/// Whether shards on io_uring install a [`RecvRing`]: yes unless `REACTOR_MULTISHOT=0`
/// (for side-by-side benchmarks of the two read paths).
pub fn enabled_by_env() -> bool {
    std::env::var("REACTOR_MULTISHOT").map_or(true, |v| v.trim() != "0")
}

/// A shard's multishot receive state (see the module comment). Cheap to clone (an `Rc`).
#[derive(Clone)]
pub struct RecvRing {
    inner: Rc<RefCell<Inner>>,
}

impl RecvRing {
    /// Registers the shard's buffer ring with the current monoio runtime's io_uring,
    /// starts the maintenance task and makes it this thread's ([`RecvRing::current`]),
    /// until [`RecvRing::uninstall`] (one per runtime).
    /// Errors (the epoll driver, or a kernel without buffer rings, < 5.19) leave the
    /// thread without one: connections then use one-shot reads.
    pub fn install() -> io::Result<RecvRing> {
        if let Some(rr) = Self::current() {
            return Ok(rr);
        }
        // Buffer rings came in 5.19, multishot receive in 6.0; an older kernel would
        // accept the registration and then fail every receive.
        match crate::sys::kernel_version() {
            Some(v) if v >= (6, 0) => {}
            v => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("multishot receive needs Linux 6.0 (this kernel: {v:?})"),
                ))
            }
        }
        let br = BufRing::new(BUF_COUNT)?;
        let bufs =
            Box::into_raw(vec![0u8; BUF_COUNT as usize * BUF_SIZE].into_boxed_slice()).cast::<u8>();
        let mut inner = Inner {
            slots: Slab::new(),
            bufs,
            br,
            br_tail: 0,
            to_cancel: Vec::new(),
            maintenance: None,
        };
        for bid in 0..BUF_COUNT {
            inner.recycle(bid);
        }
        inner.publish();
        let base = inner.br.base as u64;
        // SAFETY: the mapping lives in `inner.br` until the thread ends (the RecvRing is
        // kept in a thread-local), after the runtime's ring is gone.
        foreign::with_submitter(|s| unsafe { s.register_buf_ring(base, BUF_COUNT, BGID) })??;
        foreign::set_handler(on_completion);
        let rr = RecvRing {
            inner: Rc::new(RefCell::new(inner)),
        };
        CURRENT.with(|c| *c.borrow_mut() = Some(rr.clone()));
        monoio::spawn(maintenance(rr.clone()));
        Ok(rr)
    }

    /// This shard's ring, if [`RecvRing::install`] succeeded on this thread.
    pub fn current() -> Option<RecvRing> {
        CURRENT.with(|c| c.borrow().clone())
    }

    /// Forgets this thread's ring; call it before the runtime it was installed on ends
    /// (the reactor's shards do, as their root future finishes). The ring's buffer group
    /// and maintenance task belong to that runtime: a later runtime on the same thread
    /// installs its own. Wakers held by the state are dropped (they would keep tasks of
    /// the old runtime alive).
    pub fn uninstall() {
        if let Some(rr) = CURRENT.with(|c| c.borrow_mut().take()) {
            if let Ok(mut inner) = rr.inner.try_borrow_mut() {
                inner.maintenance = None;
                for (_, slot) in inner.slots.iter_mut() {
                    slot.waker = None;
                }
            }
        }
        STASH.with(|s| s.borrow_mut().clear());
    }

    /// Arms a multishot receive on `fd`, a connected stream socket that stays open until
    /// the returned handle is stopped or dropped (its task must own both).
    pub fn recv(&self, fd: RawFd) -> io::Result<MultiRecv> {
        let key = self.inner.borrow_mut().slots.insert(Slot {
            fd,
            inbox: Vec::new(),
            eof: false,
            err: None,
            armed: true,
            paused: false,
            stopping: false,
            orphan: false,
            waker: None,
        });
        if let Err(e) = submit(recv_sqe(fd, key)) {
            self.inner.borrow_mut().slots.remove(key);
            return Err(e);
        }
        Ok(MultiRecv {
            ring: self.clone(),
            key,
            stopped: false,
        })
    }

    /// Connections with a receive slot (armed, paused, or awaiting a final completion).
    pub fn slots(&self) -> usize {
        self.inner.borrow().slots.len()
    }
}

/// Submits the cancels the completion pass asked for (paused inboxes).
async fn maintenance(rr: RecvRing) {
    let mut keys = Vec::new();
    loop {
        std::future::poll_fn(|cx| {
            let mut inner = rr.inner.borrow_mut();
            if inner.to_cancel.is_empty() {
                inner.maintenance = Some(cx.waker().clone());
                Poll::Pending
            } else {
                std::mem::swap(&mut keys, &mut inner.to_cancel);
                Poll::Ready(())
            }
        })
        .await;
        let mut failed = false;
        for key in keys.drain(..) {
            if failed || submit(cancel_sqe(key)).is_err() {
                // Never dropped: a receive that is not cancelled would keep its socket
                // (no FIN), keep a paused inbox growing, or hang a `stop`. Tried again
                // after the other tasks of this loop turn have run.
                failed = true;
                rr.inner.borrow_mut().to_cancel.push(key);
            }
        }
        if failed {
            tracing::warn!("multishot receive: cancel not submitted; retrying");
            crate::event::yield_now().await;
        }
    }
}

impl RecvRing {
    /// Cancels slot `key`'s receive now, or hands it to the maintenance task to retry.
    fn cancel(&self, key: usize) {
        if submit(cancel_sqe(key)).is_err() {
            let mut inner = self.inner.borrow_mut();
            inner.to_cancel.push(key);
            if let Some(w) = inner.maintenance.take() {
                w.wake();
            }
        }
    }
}

/// One connection's multishot receive (see [`RecvRing::recv`]). Dropping it cancels the
/// receive; bytes received and not taken are discarded.
pub struct MultiRecv {
    ring: RecvRing,
    key: usize,
    /// Set by `stop` once the slot is removed.
    stopped: bool,
}

impl MultiRecv {
    /// Waits for bytes, the end of the stream or an error. Received bytes replace the
    /// contents of `buf` and their count is returned; `Ok(0)` is the end of the stream.
    pub fn recv(&mut self, buf: Vec<u8>) -> Recv<'_> {
        Recv {
            rx: self,
            buf: Some(buf),
        }
    }

    /// Whether [`MultiRecv::recv`] would complete at once (bytes, the end of the
    /// stream or an error are waiting), for a caller busy with other work: no waker is
    /// registered, but a receive that ended (ENOBUFS under buffer pressure, a pause
    /// whose inbox was taken) is armed again, as a `recv` would, so that bytes keep
    /// coming for a caller that only ever asks `ready`.
    pub fn ready(&mut self) -> bool {
        let mut inner = self.ring.inner.borrow_mut();
        drain_stash(&mut inner);
        let slot = &mut inner.slots[self.key];
        let ready = !slot.inbox.is_empty() || slot.err.is_some() || slot.eof;
        let rearm = !slot.armed && !slot.ended() && slot.inbox.len() < INBOX_BYTES_MAX;
        if rearm {
            slot.armed = true;
            slot.paused = false;
        }
        let fd = slot.fd;
        drop(inner);
        if rearm {
            if let Err(e) = submit(recv_sqe(fd, self.key)) {
                let mut inner = self.ring.inner.borrow_mut();
                let slot = &mut inner.slots[self.key];
                slot.armed = false;
                slot.err = Some(e.raw_os_error().unwrap_or(libc::EIO));
                return true;
            }
        }
        ready
    }

    /// Stops receiving and returns the bytes received and not yet taken, in order. The
    /// socket can then be read by other means without losing or reordering bytes.
    pub async fn stop(mut self) -> Vec<u8> {
        let cancel = {
            let mut inner = self.ring.inner.borrow_mut();
            let slot = &mut inner.slots[self.key];
            slot.stopping = true;
            slot.armed
        };
        if cancel {
            self.ring.cancel(self.key);
        }
        std::future::poll_fn(|cx| {
            let mut inner = self.ring.inner.borrow_mut();
            let slot = &mut inner.slots[self.key];
            if slot.armed {
                slot.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        let slot = self.ring.inner.borrow_mut().slots.remove(self.key);
        // The slot is gone: `Drop` has nothing left to do.
        self.stopped = true;
        slot.inbox
    }
}

impl Drop for MultiRecv {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let cancel = {
            let Ok(mut inner) = self.ring.inner.try_borrow_mut() else {
                tracing::error!("multishot receive: handle dropped while borrowed (bug)");
                return;
            };
            let slot = &mut inner.slots[self.key];
            if slot.armed {
                slot.orphan = true;
                slot.inbox = Vec::new();
                slot.waker = None;
                true
            } else {
                inner.slots.remove(self.key);
                false
            }
        };
        if cancel {
            // The socket may be closed right after this: the kernel keeps it until the
            // cancel lands (with monoio's next submission, this loop turn), then the
            // final completion frees the slot.
            self.ring.cancel(self.key);
        }
    }
}

/// Future of [`MultiRecv::recv`].
pub struct Recv<'a> {
    rx: &'a mut MultiRecv,
    buf: Option<Vec<u8>>,
}

impl Future for Recv<'_> {
    type Output = (io::Result<usize>, Vec<u8>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let key = self.rx.key;
        let ring = self.rx.ring.clone();
        let mut inner = ring.inner.borrow_mut();
        drain_stash(&mut inner);
        let slot = &mut inner.slots[key];
        let out = if !slot.inbox.is_empty() {
            let mut buf = self.buf.take().expect("polled after completion");
            buf.clear();
            if buf.capacity() > BUF_SIZE {
                // The next inbox keeps at most one buffer's worth while idle.
                buf = Vec::new();
            }
            // The inbox becomes the caller's buffer and the caller's (cleared) buffer
            // the next inbox: no copy.
            std::mem::swap(&mut buf, &mut slot.inbox);
            let n = buf.len();
            Some((Ok(n), buf))
        } else if let Some(errno) = slot.err {
            let buf = self.buf.take().expect("polled after completion");
            Some((Err(io::Error::from_raw_os_error(errno)), buf))
        } else if slot.eof {
            let buf = self.buf.take().expect("polled after completion");
            Some((Ok(0), buf))
        } else {
            None
        };
        // Arm again if the receive ended without an end of stream (ENOBUFS, the kernel's
        // own reasons, or a pause whose inbox is taken now).
        let rearm = !slot.armed && !slot.ended() && slot.inbox.len() < INBOX_BYTES_MAX;
        if rearm {
            slot.armed = true;
            slot.paused = false;
        }
        let fd = slot.fd;
        if out.is_none() {
            slot.waker = Some(cx.waker().clone());
        }
        drop(inner);
        if rearm {
            if let Err(e) = submit(recv_sqe(fd, key)) {
                let mut inner = ring.inner.borrow_mut();
                let slot = &mut inner.slots[key];
                slot.armed = false;
                slot.err = Some(e.raw_os_error().unwrap_or(libc::EIO));
                if out.is_none() {
                    cx.waker().wake_by_ref();
                }
            }
        }
        match out {
            Some(o) => Poll::Ready(o),
            None => Poll::Pending,
        }
    }
}
