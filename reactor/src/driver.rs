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

/// Extra io_uring setup flags for each shard's ring (`REACTOR_URING_SETUP`, read once at
/// start-up; a bench knob, so that the choice can be measured side by side).
///
/// * `plain`: no flags (monoio's default).
/// * `coop`: `IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG` (5.19+): completions
///   are not forced onto the shard thread by an inter-processor interrupt; they run when
///   the shard next enters the kernel anyway. A shard is the only user of its ring.
/// * `single`: `coop` plus `IORING_SETUP_SINGLE_ISSUER` (6.0+): the kernel may skip
///   locking on submission, since only the shard's thread ever submits.
///
/// * `defer`: `single` with `IORING_SETUP_DEFER_TASKRUN` (6.1+) instead of the taskrun
///   flag: completion work runs only when the shard waits in `io_uring_enter`. monoio
///   submits without `GETEVENTS` while tasks are runnable, so completions then wait for
///   the next idle turn (measured, not the default).
///
/// A ring that refuses the flags (an older kernel: `EINVAL`) is built without them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UringSetup {
    Plain,
    Coop,
    Single,
    Defer,
}

impl UringSetup {
    /// The setting from `REACTOR_URING_SETUP` (default [`UringSetup::DEFAULT`]).
    pub fn from_env() -> UringSetup {
        match std::env::var("REACTOR_URING_SETUP").as_deref() {
            Ok("plain") => UringSetup::Plain,
            Ok("coop") => UringSetup::Coop,
            Ok("single") => UringSetup::Single,
            Ok("defer") => UringSetup::Defer,
            _ => UringSetup::DEFAULT,
        }
    }

    /// Chosen by measurement, docs/BENCHMARKS.md section "io_uring data path".
    pub const DEFAULT: UringSetup = UringSetup::Single;

    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        match self {
            UringSetup::Plain => {}
            UringSetup::Coop => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            UringSetup::Single => {
                b.setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .setup_single_issuer();
            }
            UringSetup::Defer => {
                b.setup_single_issuer().setup_defer_taskrun();
            }
        }
        b
    }
}

fn uring_runtime(
    entries: u32,
) -> io::Result<monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>>> {
    let setup = UringSetup::from_env();
    let build = |setup: UringSetup| {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(setup.builder())
            .enable_timer()
            .build()
    };
    match build(setup) {
        Err(e) if setup != UringSetup::Plain && e.raw_os_error() == Some(libc::EINVAL) => {
            tracing::warn!(?setup, error = %e, "io_uring setup flags refused, building a plain ring");
            build(UringSetup::Plain)
        }
        r => r,
    }
}

/// Builds a runtime of the given driver on the current thread, with timers, and runs
/// `fut` to completion on it.
pub(crate) fn block_on<F: Future>(driver: IoDriver, entries: u32, fut: F) -> io::Result<F::Output> {
    match driver {
        IoDriver::Uring => {
            let mut rt = uring_runtime(entries)?;
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
