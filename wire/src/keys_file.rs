//! Limits of the API keys file (`api_keys.json`), shared by the server that loads it
//! and the load generator that writes it.

/// Largest key file the server accepts, in bytes.
///
/// The file is operator-supplied, but it is still input that sizes a map; a bigger file
/// is refused with the server before parsing. 512 MiB holds the
/// [`KEYS_MAX`] keys of a million-connection deployment with room to spare (~90 bytes a
/// key as `bench keys` writes them).
pub const FILE_BYTES_MAX: usize = 512 * 1024 * 1024;

/// Most keys a file may define.
///
/// The parsed keys are immutable and shared read-only by every shard (one copy per
/// process, a few hundred bytes a key): 4 Mi keys are enough for a million connected
/// peers with API keys. A file with more keys is refused with
/// the server.
pub const KEYS_MAX: usize = 4 * 1024 * 1024;
