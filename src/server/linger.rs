//! Lingering close (as nginx does after an early response): shut our write side so the
//! client sees the response end, then read and drop what it still sends until it closes,
//! bounded in time and bytes. Every early close after an error response (the HTTP loop,
//! a refused WebSocket upgrade, plain HTTP on the TLS port) ends here.

use std::time::{Duration, Instant};

use crate::tls::Transport;

/// Lingering close: the longest we keep reading (and dropping) a client's bytes after
/// an error response, in total. nginx's `lingering_time` is 30 s; a few seconds let a
/// client on a fast link finish sending a refused body (the 2 MiB limit plus a little)
/// and read its 4xx. Past it the socket is closed whatever the client still sends.
const LINGER_TIME_MAX: Duration = Duration::from_secs(5);

/// Lingering close: the longest one read may wait (nginx's `lingering_timeout`). A
/// client that has stopped sending but does not close is closed after this.
const LINGER_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Lingering close: the most bytes read and dropped. Enough for a client that sends a
/// body a few times over the 2 MiB limit before reading; beyond it we close (the
/// client may then see a reset, but it has had its chance).
const LINGER_SIZE_MAX: usize = 16 * 1024 * 1024;

/// Bytes per read while lingering (the buffer is dropped as soon as we are done).
const LINGER_CHUNK_SIZE: usize = 64 * 1024;

/// Lingering close (as nginx does after an early response): shut our write side so the
/// client sees the response end, then read and drop what it still sends until it
/// closes, for at most [`LINGER_TIME_MAX`] and [`LINGER_SIZE_MAX`] bytes (each read at
/// most [`LINGER_READ_TIMEOUT`]). Closing with unread bytes would make the kernel send
/// a reset, which can destroy the response before the client reads it.
pub async fn linger_close(stream: Transport) {
    linger_close_within(stream, LINGER_TIME_MAX).await
}

/// [`linger_close`] for at most `time_max`.
pub(super) async fn linger_close_within(mut stream: Transport, time_max: Duration) {
    if stream.shutdown().await.is_err() {
        return;
    }
    let start = Instant::now();
    let mut drained = 0usize;
    let mut buf = Vec::with_capacity(LINGER_CHUNK_SIZE);
    while drained < LINGER_SIZE_MAX {
        let left = time_max.saturating_sub(start.elapsed());
        if left.is_zero() {
            return;
        }
        // Dropped unread: TLS records need no decrypting.
        match monoio::time::timeout(left.min(LINGER_READ_TIMEOUT), stream.read_raw(buf)).await {
            Ok((Ok(n), b)) if n > 0 => {
                drained += n;
                buf = b;
                buf.clear();
            }
            _ => return,
        }
    }
}
