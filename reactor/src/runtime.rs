//! Starting and stopping the shards.

use std::fmt;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::control::{Control, STATE_DRAINING, STATE_EXIT, STATE_RUNNING};
use crate::doorbell::{Doorbell, DoorbellReader};
use crate::driver::{self, DriverChoice, IoDriver};
use crate::mailbox;
use crate::shard::Shard;

/// Capacity of each ring between two shards, in messages. 1024 absorbs bursts of a
/// busy shard (a scatter-gather from every connection at once) while keeping the lanes
/// of 64 shards under a few MiB; when a ring is full the sender gets its message back
/// and chooses backpressure or refusal (the HTTP layer answers 503).
pub const MAILBOX_CAPACITY_DEFAULT: usize = 1024;

/// Default of [`ReactorBuilder::mailbox_spin`]. A conversation between shards (ask,
/// reply, next ask) then costs no wakeup syscall on either side, which cuts an idle
/// round trip by an order of magnitude; the price is up to 50 µs of polling after the
/// last message, and smaller batches under a one-way flood (docs/BENCHMARKS.md).
pub const MAILBOX_SPIN_DEFAULT: Duration = Duration::from_micros(50);

/// Configures a [`Reactor`].
#[derive(Clone, Debug)]
pub struct ReactorBuilder {
    cores: Option<usize>,
    driver: DriverChoice,
    mailbox_capacity: usize,
    mailbox_spin: Duration,
    uring_entries: u32,
    pin: bool,
}

impl Default for ReactorBuilder {
    fn default() -> Self {
        ReactorBuilder {
            cores: None,
            driver: DriverChoice::Auto,
            mailbox_capacity: MAILBOX_CAPACITY_DEFAULT,
            mailbox_spin: mailbox_spin_from_env(),
            uring_entries: driver::URING_ENTRIES_DEFAULT,
            pin: true,
        }
    }
}

/// `REACTOR_MAILBOX_SPIN_US` (read once per builder; for benchmarks), else
/// [`MAILBOX_SPIN_DEFAULT`]. A value that is not a number is ignored with a warning.
fn mailbox_spin_from_env() -> Duration {
    match std::env::var("REACTOR_MAILBOX_SPIN_US") {
        Err(_) => MAILBOX_SPIN_DEFAULT,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(us) => Duration::from_micros(us),
            Err(_) => {
                tracing::warn!(value = %v, "REACTOR_MAILBOX_SPIN_US is not a number of microseconds; using the default");
                MAILBOX_SPIN_DEFAULT
            }
        },
    }
}

impl ReactorBuilder {
    /// Number of shards (default: the CPUs this process may run on).
    pub fn cores(mut self, n: usize) -> Self {
        self.cores = Some(n);
        self
    }
    pub fn driver(mut self, d: DriverChoice) -> Self {
        self.driver = d;
        self
    }
    pub fn mailbox_capacity(mut self, n: usize) -> Self {
        self.mailbox_capacity = n.max(2);
        self
    }
    /// How long a shard's mailbox keeps looking for mail (yielding between looks)
    /// after its last message before it sleeps on its doorbell (default 50 µs; zero:
    /// sleep as soon as a look finds nothing).
    pub fn mailbox_spin(mut self, d: Duration) -> Self {
        self.mailbox_spin = d;
        self
    }
    /// Pin shard `i` to the i-th allowed CPU (default on).
    pub fn pin(mut self, pin: bool) -> Self {
        self.pin = pin;
        self
    }

    pub fn build(self) -> Result<Reactor, ReactorError> {
        let cpus = allowed_cpus();
        let cores = self.cores.unwrap_or(cpus.len().max(1));
        if cores == 0 {
            return Err(ReactorError::Config("--cores must be at least 1".into()));
        }
        let driver = driver::resolve(self.driver, self.uring_entries).map_err(ReactorError::Io)?;
        Ok(Reactor {
            cores,
            driver,
            cpus,
            config: self,
        })
    }
}

/// Errors starting the reactor.
#[derive(Debug)]
pub enum ReactorError {
    Config(String),
    Io(io::Error),
}

impl fmt::Display for ReactorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReactorError::Config(s) => f.write_str(s),
            ReactorError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReactorError {}

/// A configured, not yet started set of shards.
pub struct Reactor {
    cores: usize,
    driver: IoDriver,
    cpus: Vec<usize>,
    config: ReactorBuilder,
}

impl Reactor {
    pub fn builder() -> ReactorBuilder {
        ReactorBuilder::default()
    }

    pub fn cores(&self) -> usize {
        self.cores
    }

    pub fn driver(&self) -> IoDriver {
        self.driver
    }

    /// Starts the shards. `per_shard` holds one value for each shard (e.g. its
    /// listener), handed to `app` on that shard's thread together with its [`Shard`].
    /// `app`'s future is the shard's application: when it completes the shard counts
    /// as drained (it must complete soon after [`Shard::shutdown_event`] fires).
    pub fn start<M, T, F, Fut>(self, per_shard: Vec<T>, app: F) -> Result<Running, ReactorError>
    where
        M: Send + 'static,
        T: Send + 'static,
        F: Fn(Shard<M>, T) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let n = self.cores;
        if per_shard.len() != n {
            return Err(ReactorError::Config(format!(
                "{} per-shard values for {n} shards",
                per_shard.len()
            )));
        }
        let mut doorbells = Vec::with_capacity(n);
        let mut readers = Vec::with_capacity(n);
        for _ in 0..n {
            let (d, r) = Doorbell::new(self.driver).map_err(ReactorError::Io)?;
            doorbells.push(d);
            readers.push(r);
        }
        let control = Arc::new(Control {
            doorbells,
            state: AtomicU8::new(STATE_RUNNING),
            drained: AtomicUsize::new(0),
        });
        let (outs, inbs) = mailbox::lanes::<M>(n, self.config.mailbox_capacity);
        let app = Arc::new(app);
        let mut threads = Vec::with_capacity(n);
        let parts = outs
            .into_iter()
            .zip(inbs)
            .zip(readers)
            .zip(per_shard)
            .enumerate();
        for (id, (((out, inb), reader), value)) in parts {
            let control = control.clone();
            let app = app.clone();
            let driver = self.driver;
            let entries = self.config.uring_entries;
            let capacity = (self.config.mailbox_capacity, self.config.mailbox_spin);
            let cpu = if self.config.pin && !self.cpus.is_empty() {
                Some(self.cpus[id % self.cpus.len()])
            } else {
                None
            };
            let t = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || {
                    shard_main(
                        id, n, driver, entries, capacity, cpu, control, out, inb, reader, value,
                        app,
                    )
                })
                .map_err(ReactorError::Io)?;
            threads.push(t);
        }
        Ok(Running {
            control,
            threads,
            cores: n,
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn shard_main<M, T, F, Fut>(
    id: usize,
    n: usize,
    driver: IoDriver,
    entries: u32,
    capacity: (usize, Duration),
    cpu: Option<usize>,
    control: Arc<Control>,
    out: Vec<Option<mailbox::OutLane<M>>>,
    inb: Vec<Option<mailbox::InLane<M>>>,
    reader: DoorbellReader,
    value: T,
    app: Arc<F>,
) -> io::Result<()>
where
    M: Send + 'static,
    F: Fn(Shard<M>, T) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    if let Some(cpu) = cpu {
        if let Err(e) = monoio::utils::bind_to_cpu_set([cpu]) {
            tracing::warn!(shard = id, cpu, error = ?e, "could not pin shard to its core");
        }
    }
    tracing::info!(shard = id, driver = %driver, cpu = ?cpu, "shard started");
    let ctl = control.clone();
    let result = driver::block_on(driver, entries, async move {
        let shard = Shard::new(id, n, driver, capacity, ctl.clone(), out, inb);
        let waiter = match reader.into_waiter() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(shard = id, error = %e, "doorbell setup failed");
                return Err(e);
            }
        };
        monoio::spawn(crate::event::yield_pump());
        monoio::spawn(shard.clone().mailbox_loop(waiter));
        if driver == IoDriver::Uring && crate::recv_ring::enabled_by_env() {
            if let Err(e) = crate::recv_ring::RecvRing::install() {
                tracing::warn!(shard = id, error = %e,
                    "multishot receive unavailable (kernel < 6.0?); connections use one-shot reads");
            }
        }
        let exit = shard.exit_event().clone();
        // The application runs as a task, not inside this root future: monoio polls a
        // woken root future again before running other tasks, so an application that
        // yields in a loop would starve the mailbox if it ran here.
        let app_done = crate::event::LocalEvent::new();
        let done = app_done.clone();
        let app_fut = app(shard.clone(), value);
        let app_task = monoio::spawn(async move {
            app_fut.await;
            done.set();
        });
        crate::timer::select2(app_done.wait(), exit.wait()).await;
        ctl.drained.fetch_add(1, Ordering::AcqRel);
        exit.wait().await;
        drop(app_task);
        crate::recv_ring::RecvRing::uninstall();
        Ok(())
    });
    match result {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(shard = id, error = %e, "shard runtime failed to start");
            // Count it as drained so a shutdown does not wait for it.
            control.drained.fetch_add(1, Ordering::AcqRel);
            Err(e)
        }
    }
}

/// Running shards.
pub struct Running {
    control: Arc<Control>,
    threads: Vec<JoinHandle<io::Result<()>>>,
    cores: usize,
}

/// How a run ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every shard drained within the timeout.
    Clean,
    /// The timeout passed with shards still draining; they were stopped.
    TimedOut,
    /// A shard thread stopped by itself (panic or runtime error): a bug or a broken host.
    ShardFailed(usize),
}

impl Running {
    /// Returns the index of a shard whose thread has ended although no shutdown asked
    /// for it.
    pub fn failed_shard(&self) -> Option<usize> {
        if self.control.state.load(Ordering::Acquire) != STATE_RUNNING {
            return None;
        }
        self.threads.iter().position(|t| t.is_finished())
    }

    /// Graceful shutdown: shards stop accepting and finish their work; after `timeout`
    /// whatever is left is dropped. Returns once every thread has ended.
    pub fn shutdown(self, timeout: Duration) -> Stopped {
        let deadline = Instant::now() + timeout;
        self.control.set_state(STATE_DRAINING);
        let mut outcome = Stopped::Clean;
        while self.control.drained.load(Ordering::Acquire) < self.cores {
            if Instant::now() >= deadline {
                tracing::warn!("shutdown timeout reached; stopping shards with work left");
                outcome = Stopped::TimedOut;
                break;
            }
            // The control thread is not a shard: it may sleep.
            std::thread::park_timeout(Duration::from_millis(5));
        }
        self.control.set_state(STATE_EXIT);
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(shard = i, error = %e, "shard ended with an error");
                    outcome = Stopped::ShardFailed(i);
                }
                Err(_) => {
                    tracing::error!(shard = i, "shard panicked");
                    outcome = Stopped::ShardFailed(i);
                }
            }
        }
        outcome
    }
}

/// CPUs this process may run on (its affinity mask), in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask struct that sched_getaffinity fills; zeroed is a
    // valid value for it, and we pass its exact size.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; `set` is valid for writes of its size.
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        return (0..n).collect();
    }
    // SAFETY: CPU_ISSET reads the bitmask we own, for indices below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect()
}
