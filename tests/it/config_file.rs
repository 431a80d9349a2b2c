//! `--config FILE` (issue 23): the real binary started with a TOML file on 127.0.0.1.
//! The file's settings apply; per setting, the command line wins over the environment,
//! which wins over the file, which wins over the default; a bad file stops the start with
//! exit status 1 and one line naming the file, the line and the key.

use crate::common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{read_response, Resp, TempDir, Value};

const BIN: &str = env!("CARGO_BIN_EXE_chatixia-core");

/// The variables the server reads, removed so the machine's environment cannot decide a
/// test (each test sets the ones it is about).
const SERVER_VARS: &[&str] = &[
    "CHATIXIA_DATA_DIR",
    "API_KEYS_FILE",
    "SIGNALING_SECRET",
    "SIGNALING_SECRET_FILE",
    "TURN_URL",
    "TURN_SECRET",
    "TURN_SECRET_FILE",
    "PORT",
];

fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1");
    for v in SERVER_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A server started with `args` (its settings in a config file); killed on drop.
struct Running {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Running {
    /// Starts the binary in `dir`; the config file must set `port-file = "<dir>/addr"`.
    fn start(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Running {
        let log = dir.join(format!("server-{}.log", std::process::id()));
        let port_file = dir.join("addr");
        let _ = std::fs::remove_file(&port_file);
        let child = command(dir, args, env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn chatixia-core");
        let mut running = Running {
            child,
            addr: "127.0.0.1:1".parse().unwrap(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(s) = std::fs::read_to_string(&port_file) {
                if let Ok(a) = s.trim().parse() {
                    running.addr = a;
                    break;
                }
            }
            if let Ok(Some(st)) = running.child.try_wait() {
                panic!("server exited early: {st}: {}", running.log());
            }
            assert!(
                Instant::now() < deadline,
                "server did not start: {}",
                running.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        running
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log of the last server started in `dir`.
    fn log_of(dir: &Path) -> String {
        std::fs::read_to_string(dir.join(format!("server-{}.log", std::process::id())))
            .unwrap_or_default()
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut raw = format!("{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n");
        for (k, v) in headers {
            raw.push_str(&format!("{k}: {v}\r\n"));
        }
        raw.push_str("\r\n");
        s.write_all(raw.as_bytes()).unwrap();
        read_response(&mut s, &mut Vec::new())
    }

    /// The STUN/TURN URLs of `GET /api/config`.
    fn ice_urls(&self) -> Vec<String> {
        let r = self.request("GET", "/api/config", &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        r.json()["iceServers"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| match &s["urls"] {
                Value::Array(a) => a.clone(),
                u => vec![u.clone()],
            })
            .map(|u| u.as_str().unwrap().to_owned())
            .collect()
    }

    /// `POST /api/token` with `key`: the status and the token.
    fn token(&self, key: &str) -> (u16, Option<String>) {
        let r = self.request("POST", "/api/token", &[("x-api-key", key)]);
        let token = (r.status == 200).then(|| r.json()["token"].as_str().unwrap().to_owned());
        (r.status, token)
    }

    /// SIGTERM; panics with the exit status and the server's log unless it exited with
    /// success (a CI run once saw a failure here with nothing to go on).
    fn stop_ok(self) {
        let log = self.log.clone();
        let st = self.stop();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(st.success(), "exit after SIGTERM: {st:?}\n{text}");
    }

    /// SIGTERM, and the exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        signal(&self.child, "-TERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, sig: &str) {
    // kill(1) keeps `unsafe` out of the tests.
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn keys(key: &str, role: &str) -> String {
    format!(r#"{{"keys": {{"{key}": {{"peer_id": "peer-{key}", "role": "{role}"}}}}}}"#)
}

/// A config file for a server on 127.0.0.1 with one shard, its port file in `dir`, and
/// `extra` lines.
fn config(dir: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "# test config\nlisten = \"127.0.0.1:0\"\ncores = 1\nport-file = \"{}\"\n{extra}",
        dir.join("addr").display()
    );
    write(dir, "chatixia-core.toml", &text)
}

fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    command(dir, args, env)
        .stdin(Stdio::null())
        .output()
        .expect("run chatixia-core")
}

fn jwt_secret_ok(token: &str, secret: &[u8]) -> bool {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<Value>(token, &jsonwebtoken::DecodingKey::from_secret(secret), &v)
        .is_ok()
}

#[test]
fn the_file_configures_the_server_and_the_store_commands() {
    let dir = TempDir::new();
    let data = dir.0.join("state");
    write(&dir.0, "keys.json", &keys("ak_from_file", "admin"));
    let cfg = config(
        &dir.0,
        &format!(
            "stun-url = [\"stun:file.example:3478\", \"stun:file2.example:3478\"]\n\
             data-dir = \"{}\"\napi-keys-file = \"{}\"\ninsecure-open-admin = true\n",
            data.display(),
            dir.0.join("keys.json").display()
        ),
    );
    let cfg_s = cfg.to_str().unwrap();
    // Nothing but the file: listen, cores, port-file, STUN, data dir, keys, a bool flag.
    let server = Running::start(&dir.0, &["--config", cfg_s], &[]);
    assert_eq!(
        server.ice_urls(),
        ["stun:file.example:3478", "stun:file2.example:3478"]
    );
    assert_eq!(server.token("ak_from_file").0, 200);
    assert_eq!(
        server.token("ak_dev_001").0,
        401,
        "the development key is off"
    );
    // insecure-open-admin = true: an operator route answers without a token.
    assert_eq!(
        server.request("GET", "/api/pairing/all", &[]).status,
        200,
        "{}",
        server.log()
    );
    assert!(server.log().contains("cores=1"), "{}", server.log());
    server.stop_ok();
    assert!(data.join("state.redb").exists(), "data-dir from the file");
    // `store verify` takes its --data-dir from the same file.
    let out = run(&dir.0, &["--config", cfg_s, "store", "verify"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&data.display().to_string()),
        "store verify: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_command_line_wins_over_the_file() {
    let dir = TempDir::new();
    let cfg = config(
        &dir.0,
        "stun-url = [\"stun:file.example:3478\"]\ninsecure-open-admin = false\n",
    );
    let server = Running::start(
        &dir.0,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--stun-url",
            "stun:flag.example:3478",
            "--insecure-open-admin",
        ],
        &[],
    );
    assert_eq!(server.ice_urls(), ["stun:flag.example:3478"]);
    assert_eq!(server.request("GET", "/api/pairing/all", &[]).status, 200);
}

#[test]
fn the_environment_wins_over_the_file_and_the_command_line_over_both() {
    let dir = TempDir::new();
    let file_data = dir.0.join("file-data");
    let env_data = dir.0.join("env-data");
    let file_keys = write(&dir.0, "file-keys.json", &keys("ak_file", "agent"));
    let env_keys = write(&dir.0, "env-keys.json", &keys("ak_env", "agent"));
    let cfg = config(
        &dir.0,
        &format!(
            "data-dir = \"{}\"\napi-keys-file = \"{}\"\nturn-url = \"turn:file.example:3478\"\n",
            file_data.display(),
            file_keys.display()
        ),
    );
    let cfg_s = cfg.to_str().unwrap();
    let env = [
        ("CHATIXIA_DATA_DIR", env_data.to_str().unwrap()),
        ("API_KEYS_FILE", env_keys.to_str().unwrap()),
        ("TURN_URL", "turn:env.example:3478"),
        ("TURN_SECRET", "turn-secret"),
    ];
    let server = Running::start(&dir.0, &["--config", cfg_s, "--stun-url", "none"], &env);
    assert_eq!(server.token("ak_env").0, 200);
    assert_eq!(server.token("ak_file").0, 401);
    let urls = server.ice_urls();
    assert!(
        urls.iter().any(|u| u.starts_with("turn:env.example")),
        "{urls:?}"
    );
    server.stop_ok();
    assert!(env_data.join("state.redb").exists());
    assert!(!file_data.exists(), "the file's data-dir was not used");

    // The command line wins over both.
    let flag_data = dir.0.join("flag-data");
    let server = Running::start(
        &dir.0,
        &[
            "--config",
            cfg_s,
            "--data-dir",
            flag_data.to_str().unwrap(),
            "--api-keys-file",
            file_keys.to_str().unwrap(),
        ],
        &env,
    );
    assert_eq!(server.token("ak_file").0, 200);
    server.stop_ok();
    assert!(flag_data.join("state.redb").exists());

    // `config check` names each source.
    let out = run(
        &dir.0,
        &["--config", cfg_s, "--cores", "2", "config", "check"],
        &[
            ("CHATIXIA_DATA_DIR", env_data.to_str().unwrap()),
            ("PORT", "7070"),
        ],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    for line in [
        "cores = 2  # command line",
        &format!("data-dir = \"{}\"  # environment", env_data.display()),
        "listen = \"127.0.0.1:0\"  # config file",
        "ws-message-max = 65536  # default",
        // PORT (environment) wins over listen from the file.
        "# listen address in effect: 0.0.0.0:7070",
    ] {
        assert!(report.contains(line), "no `{line}` in:\n{report}");
    }
}

#[test]
fn the_server_secret_comes_from_a_file_and_signaling_secret_wins_over_it() {
    let dir = TempDir::new();
    write(&dir.0, "keys.json", &keys("ak_a", "agent"));
    let secret = write(&dir.0, "secret", "secret-from-file\n");
    let cfg = config(
        &dir.0,
        &format!(
            "api-keys-file = \"{}\"\nsignaling-secret-file = \"{}\"\ndata-dir = \"{}\"\n",
            dir.0.join("keys.json").display(),
            secret.display(),
            dir.0.join("data").display()
        ),
    );
    let cfg_s = cfg.to_str().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let server = Running::start(&dir.0, &["--config", cfg_s], &[]);
    let token = server.token("ak_a").1.expect("token");
    assert!(
        jwt_secret_ok(&token, b"secret-from-file"),
        "signed with the file's secret"
    );
    let log = server.log();
    assert!(
        log.contains("holds a secret and every user of this host may read it"),
        "a world-readable secret file is warned about: {log}"
    );
    server.stop_ok();

    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    // SIGNALING_SECRET wins over the file's signaling-secret-file (another data directory:
    // the first one is sealed with the file's secret, and refuses another).
    let data2 = dir.0.join("data2");
    let env = [("SIGNALING_SECRET", "secret-from-env")];
    let args = ["--config", cfg_s, "--data-dir", data2.to_str().unwrap()];
    let server = Running::start(&dir.0, &args, &env);
    let token = server.token("ak_a").1.expect("token");
    assert!(jwt_secret_ok(&token, b"secret-from-env"));
    assert!(!jwt_secret_ok(&token, b"secret-from-file"));
    server.stop_ok();
    let log = Running::log_of(&dir.0);
    assert!(
        !log.contains(&format!("{} holds a secret", secret.display())),
        "{log}"
    );

    // --signaling-secret-file on the command line wins over SIGNALING_SECRET.
    let args = [
        "--config",
        cfg_s,
        "--signaling-secret-file",
        secret.to_str().unwrap(),
    ];
    let server = Running::start(&dir.0, &args, &env);
    let token = server.token("ak_a").1.expect("token");
    assert!(jwt_secret_ok(&token, b"secret-from-file"));
    server.stop_ok();

    // Both variables set: refused as unclear.
    let out = run(
        &dir.0,
        &["--config", cfg_s, "config", "check"],
        &[
            ("SIGNALING_SECRET", "a"),
            ("SIGNALING_SECRET_FILE", secret.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("both SIGNALING_SECRET and SIGNALING_SECRET_FILE are set"));
}

/// Runs the server with a config file of `text`: it must exit 1 at once, with one line
/// on stderr; returns that line.
fn refused(dir: &Path, text: &str) -> String {
    let cfg = write(dir, "bad.toml", text);
    refused_path(dir, &cfg)
}

fn refused_path(dir: &Path, cfg: &Path) -> String {
    // Logging off: what remains on stderr is the one line that stops the start.
    let args = ["--config", cfg.to_str().unwrap(), "--listen", "127.0.0.1:0"];
    let out = run(dir, &args, &[("RUST_LOG", "off")]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("chatixia-core: "), "{stderr}");
    stderr
}

#[test]
fn a_bad_config_file_stops_the_start_with_exit_1_naming_file_line_and_key() {
    let dir = TempDir::new();
    let bad = dir.0.join("bad.toml").display().to_string();
    let cases = [
        (
            "cores = 1\n# a comment\nmax-conections-per-ip = 5\n",
            ":3: key `max-conections-per-ip`: unknown key",
        ),
        ("ws_message_max = 5\n", "with dashes: `ws-message-max`"),
        (
            "\n\nws-message-max = \"64k\"\n",
            ":3: key `ws-message-max`: wants an integer, found a string",
        ),
        (
            "insecure-open-admin = 1\n",
            "key `insecure-open-admin`: wants true or false, found an integer",
        ),
        (
            "io-driver = \"kqueue\"\n",
            ":1: key `io-driver`: invalid value 'kqueue' for '--io-driver",
        ),
        (
            "shutdown-timeout = [1, 2]\n",
            "key `shutdown-timeout`: takes one value, found an array",
        ),
        (
            "stun-url = [\"stun:a\", 3]\n",
            "key `stun-url`: wants a string (in quotes), found an integer",
        ),
        ("[server]\ncores = 2\n", "key `server`: is a table"),
        ("cores = \n", ":1: not valid TOML"),
        ("cores = 1\ncores = 2\n", ":2: not valid TOML"),
    ];
    for (text, want) in cases {
        let line = refused(&dir.0, text);
        assert!(
            line.contains(&format!(
                "{bad}{}",
                if want.starts_with(':') { "" } else { ":" }
            )) && line.contains(want),
            "{text:?}: want {want:?} in {line}"
        );
    }
    // An unreadable file: missing, a directory, not UTF-8.
    let line = refused_path(&dir.0, &dir.0.join("missing.toml"));
    assert!(line.contains("cannot read config file") && line.contains("missing.toml"));
    let line = refused_path(&dir.0, &dir.0);
    assert!(line.contains("cannot read config file"), "{line}");
    let latin1 = dir.0.join("latin1.toml");
    std::fs::write(&latin1, b"# caf\xe9\n").unwrap();
    let line = refused_path(&dir.0, &latin1);
    assert!(line.contains("not UTF-8"), "{line}");
    // An API keys file named in the config file must exist (from the environment or by
    // default, a missing one means the development key, as in the reference).
    let line = refused(&dir.0, "api-keys-file = \"/nonexistent/keys.json\"\n");
    assert!(
        line.contains("cannot read --api-keys-file /nonexistent/keys.json"),
        "{line}"
    );
    let line = refused(&dir.0, "signaling-secret-file = \"/nonexistent/secret\"\n");
    assert!(
        line.contains("cannot read --signaling-secret-file"),
        "{line}"
    );
}

#[test]
fn the_example_file_is_complete_and_loads() {
    let dir = TempDir::new();
    let example = run(&dir.0, &["config", "example"], &[]);
    assert!(example.status.success());
    let text = String::from_utf8(example.stdout).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("packaging/chatixia-core.toml"),
    )
    .unwrap();
    assert_eq!(
        text, committed,
        "packaging/chatixia-core.toml is out of date: \
         chatixia-core config example > packaging/chatixia-core.toml"
    );
    // Every flag of `--help` (but --config, --help, --version and the test switches)
    // has an entry.
    let help = run(&dir.0, &["--help"], &[]);
    let help = String::from_utf8_lossy(&help.stdout);
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()))
        .filter(|w| !["config", "help", "version", "test-clock", "ws-echo"].contains(w))
        .filter(|w| !w.is_empty())
        .collect();
    assert!(flags.len() > 50, "{flags:?}");
    for flag in flags {
        assert!(
            text.contains(&format!("\n#{flag} = ")),
            "the example has no entry for --{flag}"
        );
    }
    // Loaded as is (all commented out) it changes nothing.
    let cfg = write(&dir.0, "example.toml", &text);
    let out = run(
        &dir.0,
        &["--config", cfg.to_str().unwrap(), "config", "check"],
        &[],
    );
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}");
    assert!(!report.contains("  # config file\n"), "{report}");
    assert!(
        report.contains("ws-message-max = 65536  # default"),
        "{report}"
    );
}

#[test]
fn sighup_keeps_the_server_running() {
    // `systemctl reload` (the unit's ExecReload) sends SIGHUP: it must not end the server.
    let dir = TempDir::new();
    let cfg = config(
        &dir.0,
        &format!("data-dir = \"{}\"\n", dir.0.join("d").display()),
    );
    let server = Running::start(&dir.0, &["--config", cfg.to_str().unwrap()], &[]);
    signal(&server.child, "-HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("SIGHUP") {
        assert!(
            Instant::now() < deadline,
            "no SIGHUP line: {}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.request("GET", "/healthz", &[]).status, 200);
    server.stop_ok();
}

#[test]
fn tls_is_configured_by_the_file_and_a_missing_half_is_named() {
    // The packaged unit starts `chatixia-core --config FILE` and nothing else: TLS must be
    // settable from the file alone, and from the file and the command line together.
    use common::tls::{self, KeyKind, Pki};
    let dir = TempDir::new();
    let pki = Pki::new();
    let files = pki.issue("localhost", KeyKind::Ecdsa);
    let other = pki.issue("other", KeyKind::Ecdsa);
    let tls_port_file = dir.0.join("tls-addr");
    let (cert, key) = (files.cert.display(), files.key.display());
    let tls_keys = format!(
        "tls-cert = \"{cert}\"\ntls-key = \"{key}\"\ntls-listen = \"127.0.0.1:0\"\n\
         tls-port-file = \"{}\"\ndata-dir = \"{}\"\n",
        tls_port_file.display(),
        dir.0.join("d").display()
    );
    let cfg = config(&dir.0, &tls_keys);
    let cfg_arg = cfg.to_str().unwrap();
    let out = run(&dir.0, &["--config", cfg_arg, "config", "check"], &[]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        report.contains(&format!("tls-cert = \"{cert}\"  # config file")),
        "{report}"
    );
    let server = Running::start(&dir.0, &["--config", cfg_arg], &[]);
    let tls_addr = tls::read_port_file(&tls_port_file);
    let client = pki.client();
    let mut c = tls::TlsConn::connect(tls_addr, &client).expect("TLS from the config file");
    assert_eq!(c.leaf(), files.leaf);
    assert_eq!(c.get("/healthz").status, 200);
    // The plain listener beside it still answers.
    assert_eq!(server.request("GET", "/healthz", &[]).status, 200);
    drop(c);
    server.stop_ok();

    // The certificate on the command line, its key from the file.
    let cfg = config(
        &dir.0,
        &format!(
            "tls-key = \"{key}\"\ntls-port-file = \"{}\"\ndata-dir = \"{}\"\n",
            tls_port_file.display(),
            dir.0.join("d").display()
        ),
    );
    let out = run(
        &dir.0,
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--tls-cert",
            &cert.to_string(),
            "config",
            "check",
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One half alone, or a TLS listener without either: refused, naming what is missing.
    let cases = [
        (
            format!("tls-cert = \"{cert}\"\n"),
            "--tls-cert needs --tls-key",
        ),
        (
            format!("tls-key = \"{key}\"\n"),
            "--tls-key needs --tls-cert",
        ),
        (
            "tls-listen = \"127.0.0.1:0\"\n".to_string(),
            "--tls-listen needs --tls-cert and --tls-key",
        ),
    ];
    for (text, want) in cases {
        let line = refused(&dir.0, &text);
        assert!(line.contains(want), "{text:?}: want {want:?} in {line}");
        let cfg = write(&dir.0, "bad.toml", &text);
        let out = run(
            &dir.0,
            &["--config", cfg.to_str().unwrap(), "config", "check"],
            &[("RUST_LOG", "off")],
        );
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains(want));
    }
    // `config check` reads the files as the start does: a key of another certificate.
    let cfg = write(
        &dir.0,
        "mismatch.toml",
        &format!(
            "tls-cert = \"{cert}\"\ntls-key = \"{}\"\n",
            other.key.display()
        ),
    );
    let out = run(
        &dir.0,
        &["--config", cfg.to_str().unwrap(), "config", "check"],
        &[("RUST_LOG", "off")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("does not match the certificate"),
        "{stderr}"
    );
}
