//! Certificate reload: the control thread reads the files again on SIGHUP and when they
//! change (it polls their metadata; shards never touch the disk), and hands a checked,
//! ready rustls configuration to every shard by a bounded queue. A shard takes the
//! newest one when it accepts a TLS connection ([`ShardTls::config`], and
//! [`ShardTls::turn_config`] for the TURN-over-TLS listeners): connections already open
//! keep theirs, none is dropped. A certificate or key that does not load is refused
//! with a log line and the one before keeps serving.

use std::cell::{Cell, RefCell};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::config::{load_configs, Configs, TlsFiles};
use super::metrics::TlsCounters;

/// Reloads queued for one shard that has not accepted a TLS connection since: a shard
/// takes them all (keeping the newest) on its next accept. When its queue is full the
/// control thread keeps the newest for it and sends it on a later tick.
const UPDATES_QUEUED_MAX: usize = 4;

/// A reloaded configuration and its generation number.
struct Update {
    generation: u64,
    configs: Configs,
}

/// What one shard holds: the configurations new TLS connections get. Shared (an `Rc`)
/// by the shard's accept loops (HTTPS, TURN over TLS); its cells are borrowed only
/// within a call.
pub struct ShardTls {
    current: RefCell<Configs>,
    generation: Cell<u64>,
    updates: Receiver<Update>,
}

impl ShardTls {
    /// Takes the newest configurations the control thread sent; notes the generation.
    fn refresh(&self, counters: &TlsCounters) {
        while let Ok(u) = self.updates.try_recv() {
            *self.current.borrow_mut() = u.configs;
            self.generation.set(u.generation);
        }
        counters.generation.set(self.generation.get());
    }

    /// The configuration for an HTTPS/WSS connection accepted now (the newest the
    /// control thread sent); notes its generation in `counters`.
    pub fn config(&self, counters: &TlsCounters) -> Arc<rustls::ServerConfig> {
        self.refresh(counters);
        self.current.borrow().http.clone()
    }

    /// The configuration for a TURN-over-TLS connection accepted now (same certificate,
    /// ALPN `stun.turn`).
    pub fn turn_config(&self, counters: &TlsCounters) -> Arc<rustls::ServerConfig> {
        self.refresh(counters);
        self.current.borrow().turn.clone()
    }
}

/// The files' identity: a change of any part means they were rewritten or replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(Vec<(Option<SystemTime>, u64, u64, u64)>);

fn stamp(files: &TlsFiles) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let mut parts = Vec::with_capacity(2);
    for p in [&files.cert, &files.key] {
        // `metadata` follows symlinks: a symlink swapped to a new file (as certbot's
        // `live/` links are) changes the target's inode.
        let m = std::fs::metadata(p).ok()?;
        parts.push((m.modified().ok(), m.len(), m.ino(), m.dev()));
    }
    Some(Stamp(parts))
}

/// The control thread's side of reloads.
pub struct Reloader {
    files: TlsFiles,
    /// Whether the HTTPS listener also takes ALPN `stun.turn` (`config::configs`).
    turn_alpn: bool,
    generation: u64,
    current: Configs,
    stamp: Option<Stamp>,
    shards: Vec<SyncSender<Update>>,
    /// Shards whose queue was full when the newest generation was sent.
    owed: Vec<bool>,
    /// How often the files' metadata is checked (zero: only on SIGHUP).
    poll_interval: Duration,
    last_poll: Instant,
}

/// The reloader and one [`ShardTls`] per shard, from the configurations `files` gave
/// at start ([`load_configs`] with `turn_alpn`: an error there stops the start, naming
/// the file).
pub fn start(
    files: TlsFiles,
    turn_alpn: bool,
    config: Configs,
    shards: usize,
    poll_interval: Duration,
) -> (Reloader, Vec<ShardTls>) {
    let stamp = stamp(&files);
    let mut senders = Vec::with_capacity(shards);
    let mut parts = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (tx, rx) = sync_channel(UPDATES_QUEUED_MAX);
        senders.push(tx);
        parts.push(ShardTls {
            current: RefCell::new(config.clone()),
            generation: Cell::new(1),
            updates: rx,
        });
    }
    let reloader = Reloader {
        files,
        turn_alpn,
        generation: 1,
        current: config,
        stamp,
        owed: vec![false; shards],
        shards: senders,
        poll_interval,
        last_poll: Instant::now(),
    };
    (reloader, parts)
}

impl Reloader {
    /// The generation new connections get once every shard has taken it.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Called by the control thread's loop: retries owed hand-overs, and reloads when
    /// the files changed (checked every `poll_interval`).
    pub fn tick(&mut self) {
        self.send_owed();
        if self.poll_interval.is_zero() || self.last_poll.elapsed() < self.poll_interval {
            return;
        }
        self.last_poll = Instant::now();
        let now = stamp(&self.files);
        // A file missing for a moment (replaced by a rename) is not a change yet.
        if now.is_some() && now != self.stamp {
            self.reload("the certificate or key file changed");
        }
    }

    /// Reads the files again and hands the new configuration to every shard; a failure
    /// is logged and the current configuration stays.
    pub fn reload(&mut self, why: &str) {
        // Taken before reading: a change while we read triggers another reload.
        self.stamp = stamp(&self.files);
        match load_configs(&self.files, self.turn_alpn) {
            Ok(config) => {
                self.generation += 1;
                self.current = config;
                self.owed.iter_mut().for_each(|o| *o = true);
                self.send_owed();
                tracing::info!(
                    generation = self.generation,
                    cert = %self.files.cert.display(),
                    "TLS certificate reloaded ({why}); new connections use it"
                );
            }
            Err(e) => tracing::error!(
                generation = self.generation,
                "TLS certificate reload refused ({why}): {e}; still serving the certificate loaded before"
            ),
        }
    }

    fn send_owed(&mut self) {
        for (i, tx) in self.shards.iter().enumerate() {
            if !self.owed[i] {
                continue;
            }
            let u = Update {
                generation: self.generation,
                configs: self.current.clone(),
            };
            match tx.try_send(u) {
                // Sent, or the shard is gone (shutting down): nothing owed.
                Ok(()) | Err(TrySendError::Disconnected(_)) => self.owed[i] = false,
                Err(TrySendError::Full(_)) => {}
            }
        }
    }
}
