//! Termination and reload signals for the control thread.
//!
//! The control thread blocks SIGINT, SIGTERM and SIGHUP before it starts the shards
//! (threads inherit the mask, so no shard is interrupted), then waits for them
//! synchronously with `sigtimedwait`. No async signal handler runs anywhere. SIGHUP is
//! `systemctl reload` (the unit's ExecReload): blocked, it no longer ends the process.

use std::io;
use std::time::Duration;

/// A termination signal that arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Interrupt,
    Terminate,
    /// SIGHUP: reload (the TLS certificates); the process goes on.
    Hangup,
}

fn term_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        set
    }
}

/// Blocks SIGINT, SIGTERM and SIGHUP in the calling thread (and threads it starts later).
pub fn block_termination() -> io::Result<()> {
    let set = term_set();
    // SAFETY: `set` is initialised; the old mask is not needed (null).
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Waits up to `timeout` for SIGINT, SIGTERM or SIGHUP (which must be blocked).
pub fn wait_termination(timeout: Duration) -> Option<Signal> {
    let set = term_set();
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as _,
    };
    // SAFETY: `set` and `ts` are valid for the call; no siginfo is requested (null).
    let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &ts) };
    match sig {
        libc::SIGINT => Some(Signal::Interrupt),
        libc::SIGTERM => Some(Signal::Terminate),
        libc::SIGHUP => Some(Signal::Hangup),
        _ => None, // EAGAIN (timeout) or EINTR
    }
}
