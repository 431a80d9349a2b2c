//! `chatixia-core store verify|backup|restore|export` (issue 22): the operator's tools
//! for the data directory. Plain control-thread code (blocking files and sockets are
//! fine: no shard runs in these processes).
//!
//! Exit status: 0 done; 2 a problem with the data, the directory or the server, reported
//! as one line on stderr naming the file (or server) and what is wrong.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chatixia_store::{backup, Counts, Secrets};

use crate::config::StoreCommand;
use crate::server::backup::BACKUP_PATH;

/// Exit status of a refused or failed store command.
pub const EXIT_STORE_PROBLEM: u8 = 2;

/// How long `store backup` waits for the server between two reads (the server streams
/// as it reads the snapshot; a stall this long means it is gone).
const BACKUP_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest response head `store backup` reads before the body.
const RESPONSE_HEAD_BYTES_MAX: usize = 64 * 1024;

/// The server secret as the server reads it (`Cli::server_secret`: SIGNALING_SECRET or
/// --signaling-secret-file), else the public development secret, with a warning.
fn secrets(secret: Option<&[u8]>) -> (Secrets, Vec<u8>) {
    let secret = secret.map(<[u8]>::to_vec).unwrap_or_else(|| {
        eprintln!(
            "chatixia-core: SIGNALING_SECRET is not set: using the public development \
             secret (as the server does)"
        );
        crate::auth::DEFAULT_SECRET.as_bytes().to_vec()
    });
    (Secrets::derive(&secret), secret)
}

fn counts_line(c: &Counts) -> String {
    format!(
        "{} records ({} pairing entries, {} device tokens, {} revocations, {} invite codes, \
         {} tasks, {} agent bindings)",
        c.total(),
        c.pairings,
        c.device_tokens,
        c.revocations,
        c.invites,
        c.tasks,
        c.agent_bindings
    )
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    let line = e.to_string().replace(['\n', '\r'], " ");
    eprintln!("chatixia-core: store {what}: {line}");
    ExitCode::from(EXIT_STORE_PROBLEM)
}

/// Runs one `store` subcommand; `secret` is the server secret (`None`: not set).
pub fn main(cmd: StoreCommand, secret: Option<Vec<u8>>) -> ExitCode {
    let secret = secret.as_deref();
    match cmd {
        StoreCommand::Verify { data_dir } => verify(&data_dir, secret),
        StoreCommand::Backup { to, url, api_key } => {
            backup_cmd(&to, &url, api_key.as_deref(), secret)
        }
        StoreCommand::Restore {
            from,
            data_dir,
            replace,
        } => restore(&from, &data_dir, replace, secret),
        StoreCommand::Export { data_dir, to } => export(&data_dir, to.as_deref(), secret),
    }
}

fn verify(data_dir: &Path, secret: Option<&[u8]>) -> ExitCode {
    let (secrets, _) = secrets(secret);
    match backup::verify(data_dir, &secrets) {
        Ok(r) => {
            println!("{}: ok", r.file.display());
            println!("  {}", counts_line(&r.counts));
            println!(
                "  commit {} (last seen at start or clean stop: {})",
                r.seq,
                r.seen_seq
                    .map_or_else(|| "none recorded".to_owned(), |s| s.to_string())
            );
            println!("  {} bytes", r.bytes);
            println!(
                "  integrity check {:.1} ms, whole check {:.1} ms",
                r.check_elapsed.as_secs_f64() * 1e3,
                r.elapsed.as_secs_f64() * 1e3
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("verify", e),
    }
}

fn restore(from: &Path, data_dir: &Path, replace: bool, secret: Option<&[u8]>) -> ExitCode {
    let (secrets, _) = secrets(secret);
    let t0 = Instant::now();
    match backup::restore(from, data_dir, &secrets, replace) {
        Ok(r) => {
            println!(
                "restored {} into {} in {:.1} ms",
                counts_line(&r.counts),
                r.file.display(),
                t0.elapsed().as_secs_f64() * 1e3
            );
            if let Some(old) = r.replaced {
                println!("  the store it replaced is now {}", old.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("restore", e),
    }
}

fn create_new(path: &Path) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn export(data_dir: &Path, to: Option<&Path>, secret: Option<&[u8]>) -> ExitCode {
    let (secrets, _) = secrets(secret);
    let result = match to {
        Some(path) => {
            let file = match create_new(path) {
                Ok(f) => f,
                Err(e) => return fail("export", e),
            };
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
            backup::export(data_dir, &secrets, &mut out).and_then(|s| {
                out.into_inner()
                    .map_err(|e| e.into_error())
                    .and_then(|f| f.sync_all())
                    .map(|()| s)
                    .map_err(|e| chatixia_store::StoreError::Io {
                        path: path.to_owned(),
                        op: "write",
                        message: e.to_string(),
                    })
            })
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(256 * 1024, stdout.lock());
            backup::export(data_dir, &secrets, &mut out)
        }
    };
    match result {
        Ok(s) => {
            eprintln!(
                "chatixia-core: exported {} ({} bytes, commit {})",
                counts_line(&s.counts),
                s.bytes,
                s.seq
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            if let Some(p) = to {
                let _ = std::fs::remove_file(p);
            }
            fail("export", e)
        }
    }
}

/// `host:port` of a plain `http://` URL (a trailing `/` allowed).
fn http_authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("--url {url:?}: only http:// URLs are supported"))?;
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "--url {url:?}: give the server's address only, as http://host:port"
        ));
    }
    Ok(if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    })
}

fn connect(authority: &str) -> Result<TcpStream, String> {
    let addrs: Vec<_> = authority
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    let mut last = String::from("no address");
    for a in addrs {
        match TcpStream::connect_timeout(&a, Duration::from_secs(10)) {
            Ok(s) => {
                let _ = s.set_read_timeout(Some(BACKUP_READ_TIMEOUT));
                let _ = s.set_write_timeout(Some(Duration::from_secs(10)));
                return Ok(s);
            }
            Err(e) => last = format!("cannot connect to {a}: {e}"),
        }
    }
    Err(last)
}

/// Sends one request and reads the response head; returns `(status, head, stream,
/// body bytes already read)`.
fn request(authority: &str, raw: &str) -> Result<(u16, String, TcpStream, Vec<u8>), String> {
    let mut s = connect(authority)?;
    s.write_all(raw.as_bytes())
        .map_err(|e| format!("{authority}: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > RESPONSE_HEAD_BYTES_MAX {
            return Err(format!("{authority}: response head too long"));
        }
        let n = s
            .read(&mut chunk)
            .map_err(|e| format!("{authority}: {e}"))?;
        if n == 0 {
            return Err(format!(
                "{authority}: closed the connection without an answer"
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("{authority}: not an HTTP response"))?;
    Ok((status, head, s, buf[end..].to_vec()))
}

/// The body of a response with a `content-length` (or up to the close).
fn small_body(head: &str, mut s: TcpStream, mut body: Vec<u8>) -> String {
    let len = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(RESPONSE_HEAD_BYTES_MAX)
        .min(RESPONSE_HEAD_BYTES_MAX);
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&body).trim().to_owned()
}

/// An admin JWT: from `/api/token` with an admin API key, or signed here with the server
/// secret.
fn admin_jwt(
    authority: &str,
    api_key: Option<&str>,
    secret: Option<&[u8]>,
) -> Result<String, String> {
    let Some(key) = api_key else {
        let (_, secret) = secrets(secret);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        return Ok(crate::auth::jwt::issue(
            &secret,
            "store-backup",
            "admin",
            now,
        ));
    };
    let raw = format!(
        "POST /api/token HTTP/1.1\r\nhost: {authority}\r\nx-api-key: {key}\r\n\
         content-length: 0\r\nconnection: close\r\n\r\n"
    );
    let (status, head, s, body) = request(authority, &raw)?;
    let body = small_body(&head, s, body);
    if status != 200 {
        return Err(format!("{authority}: /api/token answered {status}: {body}"));
    }
    serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["token"].as_str().map(str::to_owned))
        .ok_or_else(|| format!("{authority}: /api/token gave no token"))
}

fn partial_path(to: &Path) -> PathBuf {
    let mut name = to.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    to.with_file_name(name)
}

fn backup_cmd(to: &Path, url: &str, api_key: Option<&str>, secret: Option<&[u8]>) -> ExitCode {
    let t0 = Instant::now();
    match backup_inner(to, url, api_key, secret) {
        Ok((counts, bytes)) => {
            println!(
                "backed up {} to {} ({bytes} bytes) in {:.1} ms",
                counts_line(&counts),
                to.display(),
                t0.elapsed().as_secs_f64() * 1e3
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("backup", e),
    }
}

fn backup_inner(
    to: &Path,
    url: &str,
    api_key: Option<&str>,
    secret: Option<&[u8]>,
) -> Result<(Counts, u64), String> {
    if to.exists() {
        return Err(format!("{} exists; choose a new file", to.display()));
    }
    let authority = http_authority(url)?;
    let jwt = admin_jwt(&authority, api_key, secret)?;
    let raw = format!(
        "GET {BACKUP_PATH} HTTP/1.1\r\nhost: {authority}\r\nauthorization: Bearer {jwt}\r\n\
         connection: close\r\n\r\n"
    );
    let (status, head, mut s, first) = request(&authority, &raw)?;
    if status != 200 {
        let body = small_body(&head, s, first);
        return Err(format!(
            "{authority}{BACKUP_PATH} answered {status}: {body}"
        ));
    }
    let partial = partial_path(to);
    let file = create_new(&partial)?;
    let mut out = std::io::BufWriter::with_capacity(256 * 1024, file);
    let copied = (|| -> std::io::Result<u64> {
        out.write_all(&first)?;
        let n = std::io::copy(&mut s, &mut out)?;
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        Ok(n + first.len() as u64)
    })();
    let checked = copied
        .map_err(|e| format!("{authority}: the backup stream broke: {e}"))
        .and_then(|bytes| {
            backup::check_backup(&partial)
                .map(|c| (c, bytes))
                .map_err(|e| e.to_string())
        });
    match checked {
        Ok(ok) => {
            std::fs::rename(&partial, to)
                .map_err(|e| format!("cannot rename {} into place: {e}", partial.display()))?;
            if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
            }
            Ok(ok)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            http_authority("http://127.0.0.1:8080").unwrap(),
            "127.0.0.1:8080"
        );
        assert_eq!(http_authority("http://h/").unwrap(), "h:80");
        assert!(http_authority("https://h").is_err());
        assert!(http_authority("http://h/api").is_err());
        assert_eq!(
            partial_path(Path::new("/b/x.jsonl")),
            Path::new("/b/x.jsonl.partial")
        );
    }
}
