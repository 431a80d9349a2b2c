//! `--cluster` and its flags (issue 25): several nodes as one mesh over Redis.
//! Control-thread code, run once at start (the host name, a password file): blocking
//! reads are fine.

use std::time::Duration;

/// Scale-out over Redis (docs/ARCHITECTURE.md, "Cluster"). Off unless `--cluster` is
/// given: then the node shares which signaling peers it holds through Redis, relays to
/// peers of other nodes through it, and keeps a lease there.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterFlags {
    /// Join a cluster of nodes sharing this Redis: `redis://[user:password@]HOST:PORT[/DB]`,
    /// or a Sentinel-managed primary, followed through failovers:
    /// `redis+sentinel://[user:password@]HOST:PORT[,HOST:PORT…]/MASTER[/DB]` (the
    /// Sentinels' own password, if any, as `?sentinel_password=PW`).
    #[arg(long, value_name = "URL")]
    pub cluster: Option<String>,

    /// This node's name in the cluster (unique among its nodes). Default: the host name
    /// and the listening port, `HOST:PORT`.
    #[arg(long, value_name = "NAME")]
    pub node_id: Option<String>,

    /// Seconds a node's lease in Redis runs without renewal (renewed every third of it):
    /// a node killed without a goodbye leaves the other nodes' peer lists within it.
    #[arg(long, default_value_t = 10.0)]
    pub cluster_lease: f64,

    /// Prefix of every Redis key and channel of this cluster (one Redis can serve several).
    #[arg(long, default_value = "chx:")]
    pub cluster_prefix: String,

    /// Replicas that must acknowledge a durable write (`WAIT N`) before its 2xx: give
    /// the number of replicas the primary has, so that whichever a failover promotes
    /// has every acknowledged write. Default: 1 with a `redis+sentinel://` URL, 0 (no
    /// `WAIT`) with `redis://`. With more replicas than this, a failover can lose an
    /// acknowledged write (README "Several nodes as one mesh"); with fewer replicas up
    /// than this, durable writes are answered 503.
    #[arg(long, value_name = "N")]
    pub cluster_wait_replicas: Option<u32>,

    /// File holding the password of the cluster's Redis (its data nodes), in place of one
    /// in the --cluster URL, which `ps` and the config file would show; one trailing
    /// newline is ignored. It wins over a password in the URL.
    #[arg(long, env = "CHATIXIA_CLUSTER_PASSWORD_FILE", value_name = "FILE")]
    pub cluster_password_file: Option<std::path::PathBuf>,

    /// Testing only: seconds a Redis connection waits for a reply before it is declared
    /// dead (default 3), so that a test can stall Redis longer than that on a slow
    /// runner without the link giving up first. Exists only in a build with the
    /// `test-switches` feature.
    #[cfg(feature = "test-switches")]
    #[arg(long, hide = true)]
    pub cluster_command_timeout: Option<f64>,
}

/// Bytes of a `--cluster-password-file` read at most: a password, not a document.
pub const PASSWORD_FILE_BYTES_MAX: u64 = 4096;

/// The most replicas `--cluster-wait-replicas` may ask for: a primary with more is
/// unusual, and each durable write waits for the slowest of them.
pub const CLUSTER_WAIT_REPLICAS_MAX: u32 = 16;

/// Node ids longer than this are refused: the id is in every directory entry of the
/// node's peers and in its channel's name.
pub const NODE_ID_BYTES_MAX: usize = 128;

/// The settings `--cluster` asks for, checked; `None` without `--cluster`. `port`: the
/// listening port, for the default node id.
pub fn settings(
    f: &ClusterFlags,
    port: u16,
) -> Result<Option<chatixia_cluster::ClusterConfig>, String> {
    let Some(url) = &f.cluster else {
        return Ok(None);
    };
    let url = chatixia_cluster::parse_url(url).map_err(|e| format!("--cluster: {e}"))?;
    let node_id = match &f.node_id {
        Some(id) => id.clone(),
        None => format!("{}:{port}", host_name()),
    };
    if node_id.is_empty()
        || node_id.len() > NODE_ID_BYTES_MAX
        || node_id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "--node-id: {node_id:?}: 1 to {NODE_ID_BYTES_MAX} bytes, no spaces or control characters"
        ));
    }
    if !(f.cluster_lease.is_finite() && (1.0..=3600.0).contains(&f.cluster_lease)) {
        return Err("--cluster-lease: seconds between 1 and 3600".into());
    }
    if f.cluster_prefix
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err("--cluster-prefix: no spaces or control characters".into());
    }
    let mut url = url;
    if let Some(path) = &f.cluster_password_file {
        url.password = Some(read_password(path)?);
    }
    let mut c = chatixia_cluster::ClusterConfig::new(url, node_id);
    c.lease = Duration::from_secs_f64(f.cluster_lease);
    c.prefix = f.cluster_prefix.clone();
    if let Some(n) = f.cluster_wait_replicas {
        if n > CLUSTER_WAIT_REPLICAS_MAX {
            return Err(format!(
                "--cluster-wait-replicas: 0 to {CLUSTER_WAIT_REPLICAS_MAX}"
            ));
        }
        c.replicas_min = n;
    }
    #[cfg(feature = "test-switches")]
    if let Some(secs) = f.cluster_command_timeout {
        if !(secs.is_finite() && (0.1..=600.0).contains(&secs)) {
            return Err("--cluster-command-timeout: seconds between 0.1 and 600".into());
        }
        c.command_timeout = Duration::from_secs_f64(secs);
    }
    Ok(Some(c))
}

/// The host's name (`/proc/sys/kernel/hostname`, what `gethostname(2)` reads on Linux),
/// or `localhost` when it has none. The control thread at start: blocking is fine.
fn host_name() -> String {
    match std::fs::read_to_string("/proc/sys/kernel/hostname") {
        Ok(s) if !s.trim().is_empty() => s.trim().to_string(),
        _ => "localhost".into(),
    }
}

/// The password in `path` (the control thread at start: blocking is fine), one trailing
/// newline dropped; a warning when every user may read the file.
fn read_password(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let what =
        |e: &dyn std::fmt::Display| format!("--cluster-password-file {}: {e}", path.display());
    let f = std::fs::File::open(path).map_err(|e| what(&e))?;
    let mut text = String::new();
    f.take(PASSWORD_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| what(&e))?;
    if text.len() as u64 > PASSWORD_FILE_BYTES_MAX {
        return Err(what(&format!(
            "longer than {PASSWORD_FILE_BYTES_MAX} bytes"
        )));
    }
    let pw = text.strip_suffix('\n').unwrap_or(&text);
    let pw = pw.strip_suffix('\r').unwrap_or(pw);
    if pw.is_empty() {
        return Err(what(&"empty"));
    }
    if let Some(w) = super::file::world_readable(path) {
        tracing::warn!("{w}");
    }
    Ok(pw.to_string())
}
