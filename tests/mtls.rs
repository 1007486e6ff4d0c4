//! Mutual TLS between real processes: with --tls-ca on the collector, only
//! clients holding a certificate from that CA get in.

use std::path::Path;
use std::time::Duration;

use driftwatch_e2e::collector::Collector;
use driftwatch_e2e::running_agent::RunningAgent;
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
    dir: tempfile::TempDir,
    ca: Ca,
    server: Leaf,
    /// An ops tool's certificate (CN "ops").
    client: Leaf,
    /// An agent's certificate (CN "trusted").
    agent: Leaf,
    stranger: Leaf,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "fleet-ca");
    let other = Ca::new(dir.path(), "other-ca");
    Pki {
        server: ca.server(dir.path()),
        client: ca.client(dir.path(), "ops"),
        agent: ca.client(dir.path(), "trusted"),
        stranger: other.client(dir.path(), "stranger"),
        ca,
        dir,
    }
}

fn start(pki: &Pki, data: &Path, config: Option<&str>) -> Collector {
    let mut server = tls_args(&pki.ca.cert, Some(&pki.server));
    if let Some(config) = config {
        let path = pki.dir.path().join("collector.toml");
        std::fs::write(&path, config).unwrap();
        server.extend(["--config".to_string(), path.display().to_string()]);
    }
    let args: Vec<&str> = server.iter().map(String::as_str).collect();
    Collector::start(data, &args)
}

#[test]
fn only_clients_with_a_certificate_from_the_fleet_ca_get_in() {
    let pki = pki();
    let data = tempfile::tempdir().unwrap();
    let mut collector = start(&pki, data.path(), None);

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

#[test]
fn agents_without_a_fleet_certificate_are_refused_and_one_with_it_reports() {
    let pki = pki();
    let data = tempfile::tempdir().unwrap();
    let mut collector = start(&pki, data.path(), None);
    collector.client_tls = tls_args(&pki.ca.cert, Some(&pki.client));
    let work = tempfile::tempdir().unwrap();
    let root = work.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/app.conf"), "x").unwrap();
    let manifest = work.path().join("m.dwm");
    driftwatch_e2e::bake(&root, &manifest, "", "");
    let agent = |host: &str, leaf: Option<&Leaf>, extra: &[&str]| {
        let state = work.path().join(format!("state-{host}"));
        let mut args = RunningAgent::args(&collector.url(), &root, &manifest, &state);
        args.extend(["--host-id".to_string(), host.to_string()]);
        args.extend(tls_args(&pki.ca.cert, leaf));
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RunningAgent::start(&args)
    };

    let anonymous = agent("anonymous", None, &[]);
    let stranger = agent("stranger", Some(&pki.stranger), &[]);
    for refused in [&anonymous, &stranger] {
        refused.wait_for("collector unreachable", 1, Duration::from_secs(30));
    }
    let mut trusted = agent("trusted", Some(&pki.agent), &["--once"]);
    assert!(
        trusted.wait(Duration::from_secs(60)).success(),
        "{}",
        trusted.log()
    );
    let hosts = collector.cli_json(&["hosts"]);
    let ids: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["trusted"],
        "only the agent with a fleet certificate got in"
    );
    for refused in [&anonymous, &stranger] {
        assert_eq!(
            refused.count("connected to collector"),
            0,
            "{}",
            refused.log()
        );
    }
}

fn baked(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/app.conf"), "x").unwrap();
    let manifest = dir.join("m.dwm");
    driftwatch_e2e::bake(&root, &manifest, "", "");
    (root, manifest)
}

#[test]
fn certificates_decide_who_may_report_as_which_host_and_who_may_retire() {
    let pki = pki();
    let data = tempfile::tempdir().unwrap();
    let mut collector = start(
        &pki,
        data.path(),
        Some("[access]\nfleet_clients = [\"ops\"]\n"),
    );
    collector.client_tls = tls_args(&pki.ca.cert, Some(&pki.client));
    let url = collector.url();
    let work = tempfile::tempdir().unwrap();
    let (root, manifest) = baked(work.path());
    let agent = |host: &str, extra: &[&str]| {
        let state = work.path().join(format!("state-{host}"));
        let mut args = RunningAgent::args(&url, &root, &manifest, &state);
        args.extend(["--host-id".to_string(), host.to_string()]);
        args.extend(tls_args(&pki.ca.cert, Some(&pki.agent)));
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RunningAgent::start(&args)
    };

    // The "trusted" certificate cannot report as another host...
    let impostor = agent("db-1", &[]);
    impostor.wait_for("collector unreachable", 1, Duration::from_secs(30));
    assert!(
        impostor.log().contains("PermissionDenied")
            || impostor
                .log()
                .contains("not a name in the client certificate"),
        "{}",
        impostor.log()
    );
    // ...but can as itself.
    let mut honest = agent("trusted", &["--once"]);
    assert!(
        honest.wait(Duration::from_secs(60)).success(),
        "{}",
        honest.log()
    );

    // An agent's certificate may not use the fleet service; ops may.
    collector.client_tls = tls_args(&pki.ca.cert, Some(&pki.agent));
    let out = collector.cli(&["retire", "trusted"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("PermissionDenied") && stderr.contains("fleet_clients"),
        "{stderr}"
    );
    collector.client_tls = tls_args(&pki.ca.cert, Some(&pki.client));
    let hosts = collector.cli_json(&["hosts"]);
    let ids: Vec<&str> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["host_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["trusted"]);
    assert_eq!(
        collector.cli_json(&["retire", "trusted"])["status"],
        "retired"
    );
    assert!(
        collector.log().contains("agent refused"),
        "{}",
        collector.log()
    );
}

#[test]
fn the_dashboard_speaks_https_with_the_collectors_certificate() {
    let pki = pki();
    let data = tempfile::tempdir().unwrap();
    // Not loopback: allowed without --insecure because it is HTTPS.
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut args = tls_args(&pki.ca.cert, Some(&pki.server));
    args.extend(["--http".to_string(), format!("0.0.0.0:{port}")]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let collector = Collector::start(data.path(), &args);
    let curl = |url: &str, ca: Option<&Path>| {
        let mut cmd = std::process::Command::new("curl");
        cmd.args(["-sS", "--max-time", "10"]);
        if let Some(ca) = ca {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.arg(url)
            .output()
            .expect("run curl (apt-get install curl; .ci/run does)")
    };
    let ok = curl(
        &format!("https://127.0.0.1:{port}/api/v1/hosts"),
        Some(&pki.ca.cert),
    );
    assert!(
        ok.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&ok.stderr),
        collector.log()
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout), "[]");
    // Without trusting the fleet CA the certificate is refused, and
    // plaintext gets no answer.
    assert!(
        !curl(&format!("https://127.0.0.1:{port}/"), None)
            .status
            .success()
    );
    assert!(
        !curl(&format!("http://127.0.0.1:{port}/"), None)
            .status
            .success()
    );
}
