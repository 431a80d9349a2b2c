//! `reactor`: a thread-per-core runtime.
//!
//! * [`Reactor`] starts one OS thread per shard, pins it to its core, and runs a monoio
//!   runtime on io_uring there (or on monoio's epoll driver where io_uring is refused).
//! * [`listener::bind_reuseport`] opens one listener per shard on the same address.
//! * Shards talk only through [`Shard::try_tell`], [`Shard::ask`] and [`Shard::ask_all`]:
//!   bounded lock-free single-producer single-consumer queues, one per ordered pair of
//!   shards, with a wakeup written only when the receiving shard's mailbox sleeps.
//! * [`shard_of`] routes a key to its owner shard with a stable hash and no table.
//!
//! The crate knows nothing of the application that runs on it.

pub mod alloc_count;
mod control;
mod doorbell;
pub mod driver;
mod event;
pub mod listener;
mod mailbox;
pub mod net;
pub mod pool;
pub mod recv_ring;
mod route;
mod runtime;
mod shard;
pub mod signals;
pub mod sys;
pub mod timer;
pub mod udp;

pub use doorbell::{Bell, BellWaiter};
pub use driver::IoDriver;
pub use event::{yield_now, LocalEvent, Wait};
pub use mailbox::{MailboxStats, RESERVED_MAX};
pub use route::ShardId;
pub use route::{shard_of, shard_of_hash, stable_hash};
pub use runtime::{
    Reactor, ReactorBuilder, ReactorError, Running, Stopped, MAILBOX_CAPACITY_DEFAULT,
    MAILBOX_SPIN_DEFAULT,
};
pub use shard::{AskError, Reservation, Shard};
