//! The operator dashboard (issue 12): the page at `GET /` (assets compiled into the
//! binary, [`assets`]) and its admin routes: paged agents and tasks, a JSON summary, an
//! invite code ([`api`]), and the server-sent event stream's content ([`events`]).
//!
//! The dashboard owns no state. It asks the services through their own typed ops: the
//! registry and the hub for a page's part on each shard (their `Query` ops; the query
//! types and the filtering are theirs: `registry::query`, `hub::query`) and for counts
//! (`HealthCounts`, `StateCounts`, pairing's `StatusCounts`); the shard layer for each
//! shard's change log (`shard::ChangesSince`); the shard for its counters ([`ops`]).
//! Pairing issues the invite's code. No HTTP and no socket here: the router checks the
//! admin token and answers; the server writes the event stream (`server::events`).

pub mod api;
pub mod assets;
pub mod events;
pub mod ops;
pub mod paging;
