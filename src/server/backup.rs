//! `GET /api/admin/backup` (issue 22): a consistent backup of the running server's state,
//! streamed as the backup format's JSON lines (`chatixia_store::backup`).
//!
//! The shard only forwards: it asks the store for a backup stream
//! (`StoreHandle::backup`), and the storage thread takes a read snapshot between two
//! group commits (so the backup holds every change acknowledged before the request) and
//! hands it to a backup thread, which writes it in chunks into a bounded ring
//! (`BACKUP_CHUNKS_MAX` × `BACKUP_CHUNK_BYTES`) and rings the shard's bell
//! ([`reactor::Bell`]). The shard awaits the bell on its event loop and writes each chunk to the client; it never
//! reads the disk. The response has no length: it ends when the connection closes, and
//! the backup's end line (counts and SHA-256) tells a complete backup from a cut one.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chatixia_store::{Chunk, SubmitError};

use crate::http::{Request, Response};
use crate::server::ShardCtx;
use crate::tls::Transport;

/// The backup route's path (its request leaves the HTTP loop with the connection).
pub const BACKUP_PATH: &str = "/api/admin/backup";

/// A chunk (64 KiB) not taken by the client within this time ends the backup as a slow
/// consumer (the snapshot it holds keeps the database from reusing pages).
const BACKUP_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest wait for the backup thread's next chunk (it writes as fast as it reads; a
/// stall this long means it is stuck).
const BACKUP_CHUNK_WAIT_MAX: Duration = Duration::from_secs(120);

const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n\
cache-control: no-store\r\nconnection: close\r\n\r\n";

async fn write_timed(stream: &mut Transport, out: Vec<u8>) -> bool {
    matches!(
        monoio::time::timeout(BACKUP_WRITE_TIMEOUT, stream.write_all(out)).await,
        Ok((Ok(_), _))
    )
}

async fn answer(stream: &mut Transport, resp: Response) {
    let mut out = Vec::new();
    resp.encode(false, false, &mut out);
    let _ = write_timed(stream, out).await;
}

/// Serves one backup request on `stream` (an admin route: admin JWT unless
/// `--insecure-open-admin`), then closes the connection.
pub async fn stream(ctx: &ShardCtx, mut stream: Transport, req: &Request, ip: IpAddr) {
    // Always an admin token, also under --insecure-open-admin: that flag opens the
    // reference's operator routes for its hub, and the reference has no backup (a copy
    // of every record, sealed device tokens included). Wrong tokens count against the
    // address's failure budget, checked first as on every route that checks a secret.
    use crate::auth::{admin, budget, failures};
    if let Err(e) = budget::admit(ctx, ip, failures::SecretRoute::Admin).await {
        answer(&mut stream, e.into()).await;
        return;
    }
    let header = req.header("authorization");
    if let Err(e) = admin::authorize(ctx, &ctx.config.auth, header, ip).await {
        answer(&mut stream, e.into()).await;
        return;
    }
    let Some(store) = &ctx.config.store else {
        answer(
            &mut stream,
            Response::error(404, "this server keeps no durable state to back up"),
        )
        .await;
        return;
    };
    let (bell, mut waiter) = match ctx.shard.bell() {
        Ok(p) => p,
        Err(e) => {
            answer(
                &mut stream,
                Response::error(503, format!("cannot start a backup: {e}")),
            )
            .await;
            return;
        }
    };
    let mut chunks = match store.backup(Arc::new(crate::server::StoreBell(bell))) {
        Ok(s) => s,
        Err(SubmitError::BackupRunning) => {
            answer(
                &mut stream,
                Response::error(
                    503,
                    "a backup is already running (one at a time); try again when it ends",
                )
                .with_header("retry-after", "10"),
            )
            .await;
            return;
        }
        Err(e) => {
            answer(
                &mut stream,
                Response::error(503, format!("cannot start a backup: {e}; try again later")),
            )
            .await;
            return;
        }
    };
    let mut started = false;
    // The backup thread closes its doorbell when it ends: what it pushed before is
    // still taken (one more pass), then the stream ends.
    let mut bell_closed = false;
    loop {
        while let Some(c) = chunks.pop() {
            match c {
                Chunk::Data(bytes) => {
                    let out = if started {
                        bytes
                    } else {
                        started = true;
                        let mut out = Vec::with_capacity(HEAD.len() + bytes.len());
                        out.extend_from_slice(HEAD);
                        out.extend_from_slice(&bytes);
                        out
                    };
                    if !write_timed(&mut stream, out).await {
                        // Dropping the stream abandons the backup thread's work.
                        return;
                    }
                }
                Chunk::End(Ok(summary)) => {
                    tracing::info!(
                        records = summary.counts.total(),
                        bytes = summary.bytes,
                        commit = summary.seq,
                        "backup streamed"
                    );
                    if !started {
                        let _ = write_timed(&mut stream, HEAD.to_vec()).await;
                    }
                    return;
                }
                Chunk::End(Err(e)) => {
                    if started {
                        // The client gets a backup without its end line: refused on
                        // restore, and `store backup` says so.
                        tracing::warn!(error = %e, "backup failed part way");
                    } else {
                        answer(
                            &mut stream,
                            Response::error(503, format!("the backup failed: {e}")),
                        )
                        .await;
                    }
                    return;
                }
            }
        }
        if chunks.is_abandoned() || bell_closed {
            tracing::warn!("the backup thread ended without finishing the backup");
            return;
        }
        match monoio::time::timeout(BACKUP_CHUNK_WAIT_MAX, waiter.wait()).await {
            Ok(r) => bell_closed = r.is_err(),
            Err(_) => {
                tracing::warn!("the backup thread stalled; backup stream ended");
                return;
            }
        }
    }
}
