//! Mutual TLS between real processes: with --tls-ca on the collector, only
//! clients holding a certificate from that CA get in.

use std::path::Path;

use driftwatch_e2e::collector::Collector;
use driftwatch_e2e::tls::{Ca, Leaf};

fn tls_args(ca: &Path, leaf: Option<&Leaf>) -> Vec<String> {
    let mut args = vec!["--tls-ca".to_string(), ca.display().to_string()];
    if let Some(leaf) = leaf {
        args.extend([
            "--tls-cert".to_string(),
            leaf.cert.display().to_string(),
            "--tls-key".to_string(),
            leaf.key.display().to_string(),
        ]);
    }
    args
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: Ca,
    server: Leaf,
    client: Leaf,
    stranger: Leaf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "fleet-ca");
    let other = Ca::new(dir.path(), "other-ca");
    Pki {
        server: ca.server(dir.path()),
        client: ca.client(dir.path(), "ops"),
        stranger: other.client(dir.path(), "stranger"),
        ca,
        _dir: dir,
    }
}

fn start(pki: &Pki, data: &Path) -> Collector {
    let server = tls_args(&pki.ca.cert, Some(&pki.server));
    let args: Vec<&str> = server.iter().map(String::as_str).collect();
    Collector::start(data, &args)
}

#[test]
fn only_clients_with_a_certificate_from_the_fleet_ca_get_in() {
    let pki = pki();
    let data = tempfile::tempdir().unwrap();
    let mut collector = start(&pki, data.path());

    collector.client_tls = tls_args(&pki.ca.cert, Some(&pki.client));
    let ok = collector.cli(&["hosts"]);
    assert!(
        ok.status.success(),
        "a client with a fleet certificate: {}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        collector.log()
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "no hosts\n");

    for (who, tls) in [
        ("no client certificate", tls_args(&pki.ca.cert, None)),
        (
            "a certificate from another CA",
            tls_args(&pki.ca.cert, Some(&pki.stranger)),
        ),
    ] {
        collector.client_tls = tls;
        let out = collector.cli(&["hosts"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{who} got in: {stderr}");
        assert!(
            stderr.contains("driftwatch-collector: "),
            "{who}: the refusal is reported: {stderr}"
        );
    }

    // Plaintext to the TLS port is refused too.
    let plain = std::process::Command::new(driftwatch_e2e::collector_bin())
        .args(["hosts", "--server", &format!("http://{}", collector.addr)])
        .output()
        .unwrap();
    assert_eq!(plain.status.code(), Some(2));
}

#[test]
fn plaintext_off_loopback_needs_insecure_and_bad_tls_files_fail_before_binding() {
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(driftwatch_e2e::collector_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refusing to serve plaintext on 0.0.0.0:0"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(driftwatch_e2e::collector_bin())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent.pem",
            "--tls-key",
            "/nonexistent.key",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot read certificate /nonexistent.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
