//! `testssl.sh` (Debian package `testssl.sh`, installed by scripts/test.sh) against the
//! TLS port, with an ECDSA and an RSA certificate: protocols (`-p`), cipher categories
//! (`-s`), forward secrecy (`-f`) and every vulnerability check (`-U`). Its JSON must
//! show no finding above INFO, no protocol older than TLS 1.2, no weak cipher category,
//! and each vulnerability checked and not present. (Findings about the throwaway test
//! certificate itself, its trust chain or lifetime, are outside these checks.)

use crate::common;

use std::process::Command;

use common::tls::{self, KeyKind, Pki};
use common::{Opts, TempDir, Value};

/// The vulnerability checks of `-U` (testssl.sh 3.0), each of which must report OK.
const VULNERABILITIES: &[&str] = &[
    "heartbleed",
    "CCS",
    "ticketbleed",
    "ROBOT",
    "secure_renego",
    "secure_client_renego",
    "CRIME_TLS",
    "BREACH",
    "POODLE_SSL",
    "fallback_SCSV",
    "SWEET32",
    "FREAK",
    "DROWN",
    "LOGJAM",
    "BEAST",
    "LUCKY13",
    "RC4",
];

fn run(kind: KeyKind) -> Vec<Value> {
    let pki = Pki::new();
    let files = pki.issue("server", kind);
    let srv = tls::start(Opts::cores(2), &files, false);
    let dir = TempDir::new();
    let json = dir.0.join("testssl.json");
    let out = Command::new("testssl")
        .args([
            "--quiet",
            "--color",
            "0",
            "--warnings",
            "off",
            "-p",
            "-s",
            "-f",
            "-U",
        ])
        .arg("--jsonfile")
        .arg(&json)
        .arg(srv.tls_addr.to_string())
        .output()
        .expect(
            "testssl (Debian package testssl.sh) must be installed: scripts/test.sh installs it",
        );
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| {
        panic!(
            "no JSON from testssl ({e}):\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    serde_json::from_str(&text).expect("testssl JSON")
}

fn finding<'a>(all: &'a [Value], id: &str) -> &'a Value {
    all.iter()
        .find(|f| f["id"] == id)
        .unwrap_or_else(|| panic!("testssl reported no {id}"))
}

#[test]
fn testssl_finds_no_vulnerability_and_no_weak_protocol_or_cipher() {
    let kinds = [KeyKind::Ecdsa, KeyKind::Rsa];
    let runs: Vec<_> = kinds
        .into_iter()
        .map(|k| std::thread::spawn(move || (k, run(k))))
        .collect();
    for r in runs {
        let (kind, all) = r.join().unwrap();
        let bad: Vec<_> = all
            .iter()
            .filter(|f| !matches!(f["severity"].as_str(), Some("OK" | "INFO")))
            .collect();
        assert!(bad.is_empty(), "{kind:?}: findings above INFO: {bad:#?}");
        for id in ["SSLv2", "SSLv3", "TLS1", "TLS1_1"] {
            let f = finding(&all, id);
            assert_eq!(f["finding"], "not offered", "{kind:?}: {f}");
        }
        for id in ["TLS1_2", "TLS1_3"] {
            let f = finding(&all, id);
            assert!(
                f["finding"].as_str().unwrap().starts_with("offered"),
                "{kind:?}: {f}"
            );
        }
        for id in [
            "cipherlist_NULL",
            "cipherlist_aNULL",
            "cipherlist_EXPORT",
            "cipherlist_LOW",
            "cipherlist_3DES_IDEA",
            "cipherlist_AVERAGE",
        ] {
            let f = finding(&all, id);
            assert_eq!(f["finding"], "not offered", "{kind:?}: {f}");
        }
        assert_eq!(finding(&all, "cipherlist_STRONG")["finding"], "offered");
        assert_eq!(finding(&all, "PFS")["severity"], "OK", "forward secrecy");
        for id in VULNERABILITIES {
            let f = finding(&all, id);
            assert_eq!(f["severity"], "OK", "{kind:?}: {f}");
        }
    }
}
