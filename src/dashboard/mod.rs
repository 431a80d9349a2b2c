//! The operator dashboard (issue 12): the page at `GET /` (assets compiled into the
//! binary, [`assets`]), its admin routes ([`api`]: paged agents and tasks, a JSON
//! summary, an invite code, the server-sent event stream) and the per-shard pieces they
//! gather with `ask_all` ([`ops`]).
//!
//! Sans-IO here: [`paging`] pages and filters one shard's agents or tasks and merges the
//! shards' parts; the event stream reads the shards' change logs
//! (`shard::changes`). Only [`api`] does I/O.

pub mod api;
pub mod assets;
pub mod ops;
pub mod paging;
