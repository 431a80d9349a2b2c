//! Which event-loop driver a shard runs: io_uring, or monoio's epoll driver where
//! io_uring is refused (a container's seccomp answering EPERM/ENOSYS, RLIMIT_MEMLOCK).

use std::fmt;
use std::future::Future;
use std::io;
use std::str::FromStr;

/// The driver a shard actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDriver {
    Uring,
    Epoll,
}

/// What the operator asked for (`--io-driver`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DriverChoice {
    #[default]
    Auto,
    Uring,
    Epoll,
}

impl IoDriver {
    pub fn as_str(self) -> &'static str {
        match self {
            IoDriver::Uring => "io_uring",
            IoDriver::Epoll => "epoll",
        }
    }
}

impl fmt::Display for IoDriver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DriverChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(DriverChoice::Auto),
            "uring" | "io_uring" | "io-uring" => Ok(DriverChoice::Uring),
            "epoll" | "legacy" => Ok(DriverChoice::Epoll),
            other => Err(format!(
                "unknown io driver {other:?} (expected auto, uring or epoll)"
            )),
        }
    }
}

/// Submission queue size of each shard's ring. 4096 entries let one loop turn submit
/// a read or write for thousands of busy connections without flushing midway; monoio
/// flushes early when the ring is full, so this is throughput, not a hard limit.
pub const URING_ENTRIES_DEFAULT: u32 = 4096;

/// Resolves `choice` into the driver every shard will run, probing io_uring once by
/// building a real ring of the configured size (that is what fails under seccomp or a
/// tight RLIMIT_MEMLOCK).
pub fn resolve(choice: DriverChoice, entries: u32) -> io::Result<IoDriver> {
    match choice {
        DriverChoice::Epoll => Ok(IoDriver::Epoll),
        DriverChoice::Uring => probe_uring(entries).map(|_| IoDriver::Uring).map_err(|e| {
            io::Error::new(e.kind(), format!("io_uring requested but unavailable: {e}"))
        }),
        DriverChoice::Auto => match probe_uring(entries) {
            Ok(()) => Ok(IoDriver::Uring),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring unavailable, falling back to the epoll driver");
                Ok(IoDriver::Epoll)
            }
        },
    }
}

fn probe_uring(entries: u32) -> io::Result<()> {
    if !monoio::utils::detect_uring() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "io_uring_setup refused (kernel or seccomp)",
        ));
    }
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .with_entries(entries)
        .build()
        .map(drop)
}

/// Builds a runtime of the given driver on the current thread, with timers, and runs
/// `fut` to completion on it.
pub(crate) fn block_on<F: Future>(driver: IoDriver, entries: u32, fut: F) -> io::Result<F::Output> {
    match driver {
        IoDriver::Uring => {
            let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(entries)
                .enable_timer()
                .build()?;
            Ok(rt.block_on(fut))
        }
        IoDriver::Epoll => {
            let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                .with_entries(entries.min(1024))
                .enable_timer()
                .build()?;
            Ok(rt.block_on(fut))
        }
    }
}
