//! chatixia-core patch (see vendor/monoio/README.chatixia.md): io_uring operations that
//! live outside monoio's op slab, for opcodes monoio 0.2 has no op for (multishot
//! receive with a provided buffer ring). Their submissions go onto the current thread's
//! ring and are submitted with monoio's own next `io_uring_enter`; their completions
//! (user_data in `FOREIGN_USERDATA_MIN..MIN_REVERSED_USERDATA`) are handed, during
//! monoio's completion pass, to the handler the thread registered.

use std::cell::Cell;
use std::io;

use io_uring::{cqueue, squeue};

use super::{UringInner, MIN_REVERSED_USERDATA};
use crate::driver::{Inner, CURRENT};

/// The lowest user_data of a foreign operation. monoio's own ops use slab indices,
/// far below this.
pub const FOREIGN_USERDATA_MIN: u64 = 1 << 62;

/// The highest user_data a foreign operation may use (monoio reserves those above).
pub const FOREIGN_USERDATA_MAX: u64 = MIN_REVERSED_USERDATA - 1;

thread_local! {
    static HANDLER: Cell<Option<fn(&cqueue::Entry)>> = const { Cell::new(None) };
}

/// Registers this thread's handler of foreign completions. It runs inside monoio's
/// completion pass: it may wake tasks but must not call [`push`] or [`with_submitter`]
/// (the ring is borrowed by the pass).
pub fn set_handler(f: fn(&cqueue::Entry)) {
    HANDLER.with(|h| h.set(Some(f)));
}

pub(crate) fn dispatch(cqe: &cqueue::Entry) {
    if let Some(f) = HANDLER.with(|h| h.get()) {
        f(cqe);
    }
}

fn with_inner<R>(f: impl FnOnce(&mut UringInner) -> io::Result<R>) -> io::Result<R> {
    if !CURRENT.is_set() {
        return Err(io::Error::new(io::ErrorKind::Other, "not on a monoio runtime"));
    }
    CURRENT.with(|inner| match inner {
        Inner::Uring(this) => {
            // SAFETY: single-threaded runtime; callers are tasks (never the completion
            // pass, see `set_handler`), so no other reference to the driver is live.
            let inner = unsafe { &mut *this.get() };
            f(inner)
        }
        #[allow(unreachable_patterns)]
        _ => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "foreign io_uring ops need the io_uring driver",
        )),
    })
}

/// Pushes `sqe` onto the current thread's ring; it is submitted with monoio's next
/// submission. A full submission queue is submitted first.
///
/// # Safety
/// Whatever memory `sqe` points at must stay valid until its completion arrives, and
/// its user_data must lie in `FOREIGN_USERDATA_MIN..=FOREIGN_USERDATA_MAX`. Must not be
/// called from the completion handler.
pub unsafe fn push(sqe: &squeue::Entry) -> io::Result<()> {
    with_inner(|inner| loop {
        if inner.uring.submission().push(sqe).is_ok() {
            return Ok(());
        }
        inner.submit()?;
    })
}

/// Runs `f` with the current thread's ring's submitter (to register a buffer ring, or
/// to submit at once). Must not be called from the completion handler.
pub fn with_submitter<R>(f: impl FnOnce(io_uring::Submitter<'_>) -> R) -> io::Result<R> {
    with_inner(|inner| Ok(f(inner.uring.submitter())))
}
