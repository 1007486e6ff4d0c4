//! What people see: the dashboard in a real browser (Debian's Chromium,
//! headless) and the Prometheus exposition checked by `promtool`, against a
//! real collector fed by a real agent.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use driftwatch_e2e::bake;
use driftwatch_e2e::collector::Collector;
use driftwatch_e2e::running_agent::RunningAgent;

/// A collector with the dashboard on, fed one drifted host, `web-7`.
fn fleet(dir: &Path) -> (Collector, SocketAddr) {
    let http: SocketAddr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(root.join("usr/bin")).unwrap();
    std::fs::write(root.join("etc/machine-id"), "web-7\n").unwrap();
    std::fs::write(root.join("etc/app.conf"), "workers = 4\n").unwrap();
    for i in 0..8 {
        std::fs::write(root.join(format!("etc/file{i}")), "x").unwrap();
    }
    let manifest = dir.join("m.dwm");
    bake(&root, &manifest, "web", "2026.11");
    std::fs::write(root.join("etc/app.conf"), "workers = 64\n").unwrap();
    std::fs::write(root.join("usr/bin/nc"), "#!/bin/sh\n").unwrap();
    let collector = Collector::start(&dir.join("data"), &["--http", &http.to_string()]);
    let mut args = RunningAgent::args(&collector.url(), &root, &manifest, &dir.join("state"));
    args.push("--once".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = RunningAgent::start(&args);
    assert!(
        agent.wait(Duration::from_secs(60)).success(),
        "{}",
        agent.log()
    );
    (collector, http)
}

/// The DOM after the page's scripts ran, as Chromium renders it.
fn rendered(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--virtual-time-budget=10000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("run chromium (apt-get install chromium; .ci/run does)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_person_sees_the_drifted_host_its_drift_and_its_deviations() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, http) = fleet(dir.path());
    let drift = collector.cli_json(&["host", "web-7"])["drift_pct"]
        .as_f64()
        .unwrap();
    assert!(drift > 0.0);

    let fleet_page = rendered(&format!("http://{http}/#/"));
    let row = fleet_page
        .split("<tr")
        .find(|r| r.contains("data-host-id=\"web-7\""))
        .unwrap_or_else(|| panic!("no row for web-7 in:\n{fleet_page}"));
    let shown = format!("{drift:.3}");
    assert!(row.contains(&shown), "drift {shown} % on the row: {row}");
    assert!(row.contains("web"), "{row}");
    assert!(row.contains("critical_change"), "{row}");

    let host_page = rendered(&format!("http://{http}/#/hosts/web-7"));
    for path in ["etc/app.conf", "usr/bin/nc"] {
        assert!(
            host_page.contains(&format!("data-path=\"{path}\"")),
            "{path} on the host page:\n{host_page}"
        );
    }
    assert!(host_page.contains("id=\"drift-chart\""));
    assert!(host_page.contains("modified") && host_page.contains("added"));
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

#[test]
fn metrics_pass_promtool_and_carry_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (collector, http) = fleet(dir.path());
    let drift = collector.cli_json(&["host", "web-7"])["drift_pct"]
        .as_f64()
        .unwrap();
    let metrics = http_get(http, "/metrics");
    let ratio: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "driftwatch_host_drift_ratio{host_id=\"web-7\",image_id=\"web\",image_version=\"2026.11\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no drift ratio for web-7:\n{metrics}"))
        .parse()
        .unwrap();
    assert!((ratio - drift / 100.0).abs() < 1e-9, "{ratio} vs {drift}%");
    assert!(metrics.contains("driftwatch_host_flagged{host_id=\"web-7\"} 1"));
    assert!(
        metrics.contains("driftwatch_ingest_reports_total 1"),
        "{metrics}"
    );
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool (apt-get install prometheus; .ci/run does)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
