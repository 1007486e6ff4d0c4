//! The fleet flow across real processes: `driftwatch-agent run` watching a
//! baked root, streaming to a real `driftwatch-collector` over loopback,
//! with either side killed at the worst moment.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use driftwatch_e2e::collector::Collector;
use driftwatch_e2e::running_agent::RunningAgent;
use driftwatch_e2e::{agent_json, bake};

const HOST: &str = "e2e-host";
const WAIT: Duration = Duration::from_secs(60);

struct Image {
    dir: tempfile::TempDir,
    root: PathBuf,
    manifest: PathBuf,
}

impl Image {
    /// A small root with a machine id, baked.
    fn bake() -> Image {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in ["etc", "usr/bin", "usr/share/doc/app", "opt/app"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("etc/machine-id"), format!("{HOST}\n")).unwrap();
        std::fs::write(root.join("etc/app.conf"), "debug = false\n").unwrap();
        std::fs::write(root.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
        for i in 0..40 {
            std::fs::write(
                root.join(format!("usr/share/doc/app/page-{i}")),
                format!("page {i}\n"),
            )
            .unwrap();
        }
        let manifest = dir.path().join("manifest.dwm");
        bake(&root, &manifest, "e2e", "1");
        Image {
            dir,
            root,
            manifest,
        }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn agent(&self, url: &str, extra: &[&str]) -> RunningAgent {
        let mut args = RunningAgent::args(url, &self.root, &self.manifest, &self.state());
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        RunningAgent::start(&args)
    }

    /// What `verify` says about the root right now.
    fn verify(&self) -> serde_json::Value {
        agent_json(&[
            "verify",
            "--root",
            self.root.to_str().unwrap(),
            "--manifest",
            self.manifest.to_str().unwrap(),
            "--format",
            "json",
        ])
        .1
    }
}

fn deviations(host: &serde_json::Value) -> Vec<(String, String)> {
    host["deviations"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|d| {
                    (
                        d["kind"].as_str().unwrap_or("").to_string(),
                        d["path"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn scanned(host: &serde_json::Value) -> bool {
    host["last_scan"].as_str().is_some_and(|s| s != "-")
}

#[test]
fn a_change_shows_up_with_kind_path_and_drift_and_putting_it_back_resolves_it() {
    let image = Image::bake();
    let data = tempfile::tempdir().unwrap();
    let collector = Collector::start(data.path(), &[]);
    let _agent = image.agent(&collector.url(), &["--interval", "1s"]);

    let host = collector.wait_for_host(HOST, WAIT, scanned);
    assert_eq!(host["deviation_count"], 0, "{host:#}");
    assert_eq!(host["drift_pct"], 0.0);
    assert_eq!(host["image_id"], "e2e");
    assert_eq!(host["connected"], true);

    let original = std::fs::read(image.root.join("etc/app.conf")).unwrap();
    std::fs::write(image.root.join("etc/app.conf"), "debug = true\n").unwrap();
    let host = collector.wait_for_host(HOST, WAIT, |h| h["deviation_count"] == 1);
    assert_eq!(
        deviations(&host),
        [("modified".to_string(), "etc/app.conf".to_string())]
    );
    let d = &host["deviations"][0];
    assert_ne!(d["expected"]["blake3"], d["actual"]["blake3"]);
    assert_eq!(d["expected"]["size"], 14);
    assert_eq!(d["actual"]["size"], 13);
    assert_eq!(d["critical"], false);
    let local = image.verify();
    let (at_collector, at_host) = (
        host["drift_pct"].as_f64().unwrap(),
        local["drift_pct"].as_f64().unwrap(),
    );
    assert!(at_host > 0.0);
    assert!(
        (at_collector - at_host).abs() < 1e-9,
        "collector {at_collector} vs verify {at_host}"
    );

    // Back to the image's bytes: the deviation resolves.
    std::fs::write(image.root.join("etc/app.conf"), original).unwrap();
    let host = collector.wait_for_host(HOST, WAIT, |h| h["deviation_count"] == 0);
    assert_eq!(host["drift_pct"], 0.0);
    assert_eq!(host["flagged"], false, "{host:#}");
    assert!(host["history"].as_array().unwrap().len() >= 3);

    // A critical change flags at once and stays after it is undone.
    std::fs::write(image.root.join("usr/bin/nc"), "#!/bin/sh\n").unwrap();
    let host = collector.wait_for_host(HOST, WAIT, |h| h["flagged"] == true);
    assert_eq!(host["reasons"][0]["code"], "critical_change");
    std::fs::remove_file(image.root.join("usr/bin/nc")).unwrap();
    let host = collector.wait_for_host(HOST, WAIT, |h| h["deviation_count"] == 0);
    assert_eq!(host["flagged"], true, "critical flags stay until retired");
    let retired = collector.cli_json(&["retire", HOST]);
    assert_eq!(retired["status"], "retired");
    assert_eq!(retired["flagged"], false);
}

/// Counts the host's deviations straight from the collector's database.
fn stored_deviations(data: &Path) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        data.join("driftwatch.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    );
    db.and_then(|db| {
        db.query_row(
            "SELECT COUNT(*) FROM deviations WHERE host_id = ?1",
            [HOST],
            |r| r.get(0),
        )
    })
    .unwrap_or(0)
}

#[test]
fn collector_killed_mid_stream_every_deviation_arrives_exactly_once() {
    const ADDED: usize = 60_000;
    let image = Image::bake();
    // Tens of thousands of dropped files: dozens of reports to stream.
    let junk = image.root.join("opt/app/junk");
    std::fs::create_dir_all(&junk).unwrap();
    for i in 0..ADDED {
        std::fs::write(junk.join(format!("f{i:05}")), b"").unwrap();
    }
    let data = tempfile::tempdir().unwrap();
    let mut collector = Collector::start(data.path(), &[]);
    let mut agent = image.agent(&collector.url(), &["--once"]);

    // Freeze the collector the moment the first reports are committed,
    // check that the stream is really half-way, then kill it.
    let deadline = Instant::now() + WAIT;
    let at_kill = loop {
        let n = stored_deviations(data.path());
        if n > 0 {
            let _ = std::process::Command::new("kill")
                .args(["-STOP", &collector.pid().to_string()])
                .status();
            break stored_deviations(data.path());
        }
        assert!(
            Instant::now() < deadline,
            "nothing arrived:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    collector.kill();
    assert!(
        at_kill > 0 && (at_kill as usize) < ADDED,
        "killed mid-stream ({at_kill} of {ADDED} stored)"
    );
    collector.restart();
    assert!(agent.wait(WAIT).success(), "{}", agent.log());
    // The files and their directory.
    assert_eq!(stored_deviations(data.path()) as usize, ADDED + 1);
    let host = collector.cli_json(&["host", HOST]);
    assert_eq!(host["deviation_count"], ADDED + 1);
    assert_eq!(
        host["deviations"].as_array().unwrap().len(),
        10_000,
        "a report carries at most 10,000 deviations"
    );
    assert_eq!(
        host["history"].as_array().unwrap().len(),
        1,
        "the scan's end was applied once: {:#}",
        host["history"]
    );
    assert!(
        agent.count("connected to collector") >= 2,
        "{}",
        agent.log()
    );
}

#[test]
fn an_agent_started_before_the_collector_delivers_when_it_comes_up() {
    let image = Image::bake();
    std::fs::write(image.root.join("opt/app/extra"), "x").unwrap();
    // A free port, released for the collector to take later.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut agent = image.agent(&format!("http://{addr}"), &["--once"]);
    agent.wait_for("scan spooled", 1, WAIT);
    agent.wait_for("collector unreachable", 1, WAIT);
    let data = tempfile::tempdir().unwrap();
    let collector = Collector::start_on(addr, data.path(), &[]);
    assert!(agent.wait(WAIT).success(), "{}", agent.log());
    let host = collector.cli_json(&["host", HOST]);
    assert_eq!(
        deviations(&host),
        [("added".to_string(), "opt/app/extra".to_string())]
    );
}

#[test]
fn an_agent_killed_and_restarted_sends_nothing_twice() {
    let image = Image::bake();
    let data = tempfile::tempdir().unwrap();
    let collector = Collector::start(data.path(), &[]);
    std::fs::write(image.root.join("opt/app/one"), "1").unwrap();
    let mut first = image.agent(&collector.url(), &["--once"]);
    assert!(first.wait(WAIT).success(), "{}", first.log());
    let before = collector.cli_json(&["host", HOST]);
    let first_seen = before["deviations"][0]["first_seen"].clone();

    // Killed at once: wherever it got to (mid-scan, spooled, mid-send).
    std::fs::write(image.root.join("opt/app/two"), "2").unwrap();
    let mut second = image.agent(&collector.url(), &["--interval", "1s"]);
    second.wait_for("scan spooled", 1, WAIT);
    second.kill();

    std::fs::write(image.root.join("opt/app/three"), "3").unwrap();
    let mut third = image.agent(&collector.url(), &["--once"]);
    assert!(third.wait(WAIT).success(), "{}", third.log());

    let host = collector.cli_json(&["host", HOST]);
    let mut got = deviations(&host);
    got.sort();
    assert_eq!(
        got,
        ["one", "three", "two"].map(|n| ("added".to_string(), format!("opt/app/{n}")))
    );
    assert_eq!(
        host["deviations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["path"] == "opt/app/one")
            .unwrap()["first_seen"],
        first_seen,
        "the first deviation was never re-created"
    );
    // Every scan any agent spooled is in the history exactly once.
    let spooled =
        first.count("scan spooled") + second.count("scan spooled") + third.count("scan spooled");
    assert_eq!(
        host["history"].as_array().unwrap().len(),
        spooled,
        "{:#}\n{}\n{}",
        host["history"],
        second.log(),
        third.log()
    );
}
