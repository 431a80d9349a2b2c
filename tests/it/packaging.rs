//! The bare-metal install (issue 23): the systemd unit passes `systemd-analyze verify`
//! and keeps io_uring allowed; scripts/build-deb.sh builds a package with both binaries,
//! the unit, the system user and the config file (a conffile); dpkg installs it into a
//! throwaway root (its postinst makes the user and the secrets there), the packaged
//! server runs on what the postinst made, and a purge keeps the secrets.
//!
//! A missing tool (systemd-analyze, dpkg-deb) fails the test under `CI=true` and is
//! reported and skipped elsewhere; so is installing, which needs root.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::TempDir;

const BIN: &str = env!("CARGO_BIN_EXE_chatixia-core");

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Whether `tool` is on PATH; missing under `CI=true` is a failure.
fn have(tool: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        common::skip(&format!("{tool} is missing"));
    }
    found
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    let root = String::from_utf8_lossy(&out.stdout).trim() == "0";
    if !root {
        common::skip("installing with dpkg --root needs root");
    }
    root
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unit_text() -> String {
    std::fs::read_to_string(repo().join("packaging/chatixia-core.service")).unwrap()
}

/// The values of `key=` in the unit, in order.
fn unit_values(unit: &str, key: &str) -> Vec<String> {
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
        .collect()
}

/// Runs `systemd-analyze verify` on `unit` (with ExecStart's binary at `bin`: verify
/// checks that the binary exists on this host; the rest is as shipped).
fn verify_unit(unit: &str, bin: &Path) {
    let dir = TempDir::new();
    let path = dir.0.join("chatixia-core.service");
    let shipped = "/usr/bin/chatixia-core --config";
    assert!(unit.contains(shipped), "ExecStart runs {shipped}");
    std::fs::write(
        &path,
        unit.replace(shipped, &format!("{} --config", bin.display())),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("chatixia-core.service"),
        "systemd-analyze verify: {stderr}"
    );
}

#[test]
fn the_unit_passes_systemd_analyze_verify_and_allows_io_uring() {
    if !have("systemd-analyze") {
        return;
    }
    let unit = unit_text();
    verify_unit(&unit, Path::new(BIN));

    for (key, want) in [
        (
            "ExecStart",
            "/usr/bin/chatixia-core --config /etc/chatixia-core/chatixia-core.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("User", "chatixia-core"),
        ("StateDirectory", "chatixia-core"),
        ("LimitNOFILE", "1048576"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
    ] {
        assert_eq!(unit_values(&unit, key), [want], "{key}");
    }
    // The config file's data-dir is the state directory.
    let head =
        std::fs::read_to_string(repo().join("packaging/debian/chatixia-core.toml.head")).unwrap();
    assert!(head.contains("\ndata-dir = \"/var/lib/chatixia-core\"\n"));

    // io_uring stays allowed: named in the allow list, and in none of the denied groups
    // as this systemd defines them (else the server would run on epoll).
    let filters = unit_values(&unit, "SystemCallFilter");
    let (deny, allow): (Vec<&String>, Vec<&String>) =
        filters.iter().partition(|f| f.starts_with('~'));
    for call in ["io_uring_setup", "io_uring_enter", "io_uring_register"] {
        assert!(
            allow
                .iter()
                .any(|f| f.split_whitespace().any(|w| w == call)),
            "{call} is not in the allow list"
        );
        for group in deny
            .iter()
            .flat_map(|f| f.trim_start_matches('~').split_whitespace())
        {
            let out = Command::new("systemd-analyze")
                .args(["syscall-filter", group])
                .output()
                .unwrap();
            let members = ok(out, "systemd-analyze syscall-filter");
            assert!(
                !members.split_whitespace().any(|w| w == call),
                "{call} is denied by {group}"
            );
        }
    }
    // @system-service itself holds them on this systemd (the unit names them anyway).
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "@aio"])
        .output()
        .unwrap();
    let aio = ok(out, "systemd-analyze syscall-filter @aio");
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "@system-service"])
        .output()
        .unwrap();
    let service = ok(out, "systemd-analyze syscall-filter @system-service");
    if service.contains("@aio") {
        assert!(aio.contains("io_uring_setup"), "{aio}");
    }

    // The exposure score (0 = locked down, 10 = unprotected); the shipped unit is 1.5.
    let dir = TempDir::new();
    let path = dir.0.join("chatixia-core.service");
    std::fs::write(&path, &unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(&path)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let score: f64 = report
        .lines()
        .find_map(|l| l.split("exposure level for chatixia-core.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {report}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{report}");
}

/// Builds the package of this build's binaries with scripts/build-deb.sh.
fn build_package(out: &Path) -> PathBuf {
    let sidecar = common::sidecar::sidecar_binary();
    let out = Command::new(repo().join("scripts/build-deb.sh"))
        .args(["--core", BIN, "--sidecar"])
        .arg(&sidecar)
        .arg("--out")
        .arg(out)
        .args(["--compress", "none"])
        .output()
        .unwrap();
    let stdout = ok(out, "scripts/build-deb.sh");
    PathBuf::from(stdout.lines().last().expect("the package's path").trim())
}

fn dpkg(root: &Path, args: &[&str]) -> String {
    let out = Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args([
            "--force-script-chrootless",
            "--force-depends",
            "--log=/dev/null",
        ])
        .args(args)
        .output()
        .unwrap();
    ok(out, &format!("dpkg {args:?}"))
}

fn mode_and_gid(path: &Path) -> (u32, u32) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (m.mode() & 0o7777, m.gid())
}

#[test]
fn the_debian_package_holds_the_binaries_unit_and_config_and_installs() {
    if !have("dpkg-deb") || !have("strip") {
        return;
    }
    let dir = TempDir::new();
    let deb = build_package(&dir.0);

    let info = ok(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .output()
            .unwrap(),
        "dpkg-deb --info",
    );
    for want in [
        "Package: chatixia-core",
        "Depends: libc6",
        "Section: net",
        "postinst",
        "prerm",
        "postrm",
    ] {
        assert!(info.contains(want), "no {want:?} in:\n{info}");
    }
    let conffiles = ok(
        Command::new("dpkg-deb")
            .args(["--ctrl-tarfile"])
            .arg(&deb)
            .output()
            .map(|o| {
                // The control archive's conffiles, through tar.
                let ctrl = dir.0.join("control.tar");
                std::fs::write(&ctrl, &o.stdout).unwrap();
                Command::new("tar")
                    .args(["-xOf"])
                    .arg(&ctrl)
                    .arg("./conffiles")
                    .output()
                    .unwrap()
            })
            .unwrap(),
        "conffiles",
    );
    assert_eq!(conffiles, "/etc/chatixia-core/chatixia-core.toml\n");

    // Every file, with its mode and owner; nothing else.
    let contents = ok(
        Command::new("dpkg-deb")
            .arg("--contents")
            .arg(&deb)
            .output()
            .unwrap(),
        "dpkg-deb --contents",
    );
    let mut files: Vec<(String, String, String)> = contents
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[5].to_owned(), f[0].to_owned(), f[1].to_owned())
        })
        .collect();
    files.sort();
    let want = [
        ("./etc/chatixia-core/chatixia-core.toml", "-rw-r--r--"),
        ("./usr/bin/chatixia-core", "-rwxr-xr-x"),
        ("./usr/bin/chatixia-sidecar", "-rwxr-xr-x"),
        (
            "./usr/lib/systemd/system/chatixia-core.service",
            "-rw-r--r--",
        ),
        ("./usr/lib/sysusers.d/chatixia-core.conf", "-rw-r--r--"),
        ("./usr/share/doc/chatixia-core/README.md", "-rw-r--r--"),
        ("./usr/share/doc/chatixia-core/copyright", "-rw-r--r--"),
    ];
    let got: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, m, owner)| {
            assert_eq!(owner, "root/root", "{p}");
            (p.as_str(), m.as_str())
        })
        .collect();
    assert_eq!(got, want, "{contents}");

    // The files as they land (dpkg -x): the unit is the repository's, and the config file
    // is the package's settings followed by the example with every key.
    let x = dir.0.join("x");
    ok(
        Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&x)
            .output()
            .unwrap(),
        "dpkg-deb -x",
    );
    assert_eq!(
        std::fs::read_to_string(x.join("usr/lib/systemd/system/chatixia-core.service")).unwrap(),
        unit_text()
    );
    let conf = std::fs::read_to_string(x.join("etc/chatixia-core/chatixia-core.toml")).unwrap();
    let example = std::fs::read_to_string(repo().join("packaging/chatixia-core.toml")).unwrap();
    assert!(conf.ends_with(&example));
    let packaged = x.join("usr/bin/chatixia-core");
    let version = ok(
        Command::new(&packaged).arg("--version").output().unwrap(),
        "chatixia-core --version",
    );
    assert!(version.starts_with("chatixia-core "), "{version}");
    if have("systemd-analyze") {
        verify_unit(&unit_text(), &packaged);
    }

    if !have("dpkg") || !is_root() {
        return;
    }
    // Install into a throwaway root: dpkg runs the maintainer scripts with DPKG_ROOT.
    let root = dir.0.join("root");
    for d in ["var/lib/dpkg/info", "var/lib/dpkg/updates", "etc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    dpkg(&root, &["-i", deb.to_str().unwrap()]);
    let status = std::fs::read_to_string(root.join("var/lib/dpkg/status")).unwrap();
    assert!(status.contains("Status: install ok installed"), "{status}");
    assert!(status.contains("Conffiles:\n /etc/chatixia-core/chatixia-core.toml "));
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    let user = passwd
        .lines()
        .find(|l| l.starts_with("chatixia-core:"))
        .unwrap_or_else(|| panic!("no user chatixia-core: {passwd}"));
    assert!(
        user.ends_with(":/var/lib/chatixia-core:/usr/sbin/nologin"),
        "{user}"
    );
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    let gid: u32 = group
        .lines()
        .find_map(|l| l.strip_prefix("chatixia-core:x:"))
        .and_then(|r| r.split(':').next())
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no group chatixia-core: {group}"));
    let etc = root.join("etc/chatixia-core");
    let secret_path = etc.join("signaling-secret");
    let keys_path = etc.join("api_keys.json");
    for p in [&secret_path, &keys_path] {
        assert_eq!(mode_and_gid(p), (0o640, gid), "{}", p.display());
    }
    let secret = std::fs::read_to_string(&secret_path).unwrap();
    assert_eq!(secret.trim().len(), 64, "32 random bytes in hex");
    let keys: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&keys_path).unwrap()).unwrap();
    let keys = keys["keys"].as_object().unwrap();
    assert_eq!(keys.len(), 1);
    let (admin_key, entry) = keys.iter().next().unwrap();
    assert_eq!(entry["role"], "admin");

    // The packaged server on the installed files (the root's paths on the command line,
    // which wins over the config file's): the postinst's admin key and secret work.
    let conf = etc.join("chatixia-core.toml");
    let port_file = dir.0.join("addr");
    let mut server = Command::new(root.join("usr/bin/chatixia-core"))
        .arg("--config")
        .arg(&conf)
        .arg("--data-dir")
        .arg(root.join("var/lib/chatixia-core"))
        .arg("--api-keys-file")
        .arg(&keys_path)
        .arg("--signaling-secret-file")
        .arg(&secret_path)
        .args(["--listen", "127.0.0.1:0", "--cores", "1", "--port-file"])
        .arg(&port_file)
        .env_remove("SIGNALING_SECRET")
        .env_remove("API_KEYS_FILE")
        .env_remove("CHATIXIA_DATA_DIR")
        .env("RUST_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr: std::net::SocketAddr = loop {
        if let Some(a) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            break a;
        }
        assert!(
            server.try_wait().unwrap().is_none(),
            "the packaged server exited"
        );
        assert!(
            Instant::now() < deadline,
            "the packaged server did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    use std::io::Write;
    write!(
        s,
        "POST /api/token HTTP/1.1\r\nhost: x\r\nx-api-key: {admin_key}\r\ncontent-length: 0\r\n\r\n"
    )
    .unwrap();
    let r = common::read_response(&mut s, &mut Vec::new());
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_secret(secret.trim().as_bytes()),
        &v,
    )
    .expect("the token is signed with the postinst's secret");

    // Installing again keeps the secrets; a purge removes the files and the conffile and
    // keeps the secrets (they unlock the data).
    dpkg(&root, &["-i", deb.to_str().unwrap()]);
    assert_eq!(std::fs::read_to_string(&secret_path).unwrap(), secret);
    dpkg(&root, &["-P", "chatixia-core"]);
    assert!(!root.join("usr/bin/chatixia-core").exists());
    assert!(!root
        .join("usr/lib/systemd/system/chatixia-core.service")
        .exists());
    assert!(!conf.exists(), "the conffile goes with a purge");
    assert!(secret_path.exists() && keys_path.exists());
}
