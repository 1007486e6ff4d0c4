//! `run` against a fake collector on a real socket: delivery, replay,
//! reconnects, drops, shutdown. The fake follows the contract in
//! `agent.proto` (Welcome with the last applied seq, Ack after applying,
//! duplicates acknowledged but not applied) and checks the agent's half:
//! Hello first, seqs never reused for different content.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftwatch_agent::bake;
use driftwatch_agent::policy::Policy;
use driftwatch_agent::run::config::{Collector, Config, TlsFiles};
use driftwatch_agent::scan::ScanOptions;
use driftwatch_proto::Provenance;
use driftwatch_proto::pb::v1 as pb;
use pb::agent_service_server::{AgentService, AgentServiceServer};
use pb::deviation_change::Change;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

/// What the fake collector saw.
#[derive(Debug, Default)]
struct Log {
    hellos: Vec<pb::Hello>,
    /// Every report received, duplicates included, in arrival order.
    received: Vec<pb::Report>,
    /// Applied reports by seq (each once).
    applied: BTreeMap<u64, pb::Report>,
    last_applied: u64,
    heartbeats: usize,
    /// Contract violations, checked by every test.
    violations: Vec<String>,
}

#[derive(Clone)]
struct FakeCollector {
    log: Arc<Mutex<Log>>,
    /// Whether to acknowledge (a collector that never acks keeps the
    /// agent's spool full).
    ack: bool,
}

impl FakeCollector {
    fn new(ack: bool) -> FakeCollector {
        FakeCollector {
            log: Arc::default(),
            ack,
        }
    }

    fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

#[tonic::async_trait]
impl AgentService for FakeCollector {
    type SessionStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let log = Arc::clone(&self.log);
        let ack = self.ack;
        tokio::spawn(async move {
            let send = |body| pb::CollectorMessage { body: Some(body) };
            match inbound.message().await {
                Ok(Some(pb::AgentMessage {
                    body: Some(pb::agent_message::Body::Hello(hello)),
                })) => log.lock().unwrap().hellos.push(hello),
                other => {
                    log.lock()
                        .unwrap()
                        .violations
                        .push(format!("first message is not Hello: {other:?}"));
                    return;
                }
            }
            let last = log.lock().unwrap().last_applied;
            let welcome = pb::Welcome {
                last_applied_seq: last,
            };
            if tx
                .send(Ok(send(pb::collector_message::Body::Welcome(welcome))))
                .await
                .is_err()
            {
                return;
            }
            while let Ok(Some(message)) = inbound.message().await {
                match message.body {
                    Some(pb::agent_message::Body::Report(report)) => {
                        let seq = {
                            let mut log = log.lock().unwrap();
                            log.received.push(report.clone());
                            if let Some(before) = log.applied.get(&report.seq)
                                && before != &report
                            {
                                let v = format!("seq {} reused for different content", report.seq);
                                log.violations.push(v);
                            }
                            if report.seq <= log.last_applied {
                                // Already applied: acknowledged again only.
                            } else {
                                log.last_applied = report.seq;
                                log.applied.insert(report.seq, report);
                            }
                            log.last_applied
                        };
                        if ack {
                            let ack = pb::Ack { seq };
                            let _ = tx
                                .send(Ok(send(pb::collector_message::Body::Ack(ack))))
                                .await;
                        }
                    }
                    Some(pb::agent_message::Body::Heartbeat(_)) => {
                        log.lock().unwrap().heartbeats += 1
                    }
                    other => log
                        .lock()
                        .unwrap()
                        .violations
                        .push(format!("unexpected message: {other:?}")),
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves `fake` on `listener` until the returned handle is aborted.
fn serve(fake: &FakeCollector, listener: TcpListener) -> tokio::task::JoinHandle<()> {
    let service = AgentServiceServer::new(fake.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    })
}

async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

/// A root with a few files, baked into a manifest outside it.
struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    manifest: PathBuf,
    state: PathBuf,
}

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("etc/app.conf"), b"port = 80\n").unwrap();
        std::fs::write(root.join("usr/bin/app"), b"\x7fELF app").unwrap();
        let baked = bake::bake(
            &root,
            &Policy::builtin(),
            Provenance {
                image_id: "web".into(),
                image_version: "1.4.2".into(),
                build_time_unix: 1_700_000_000,
                ..Provenance::default()
            },
            &ScanOptions {
                threads: 2,
                ..ScanOptions::default()
            },
        )
        .unwrap();
        let manifest = dir.path().join("image.dwm");
        bake::write_manifest(&manifest, &baked.encoded.bytes).unwrap();
        let state = dir.path().join("state");
        Host {
            root,
            manifest,
            state,
            _dir: dir,
        }
    }

    fn config(&self, addr: SocketAddr) -> Config {
        Config {
            collector: Collector::new(&format!("http://{addr}"), &TlsFiles::default()).unwrap(),
            root: self.root.clone(),
            manifest: self.manifest.clone(),
            host_id: Some("host-1".into()),
            interval: Duration::from_secs(3600),
            state_dir: self.state.clone(),
            heartbeat: Duration::from_secs(30),
            threads: 1,
            max_read_rate: None,
            spool_max_bytes: 64 * 1024 * 1024,
            one_file_system: false,
            once: true,
        }
    }

    fn spooled(&self) -> usize {
        std::fs::read_dir(self.state.join("spool"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

fn changes(report: &pb::Report) -> Vec<(Change, String, String)> {
    report
        .changes
        .iter()
        .map(|c| {
            let d = c.deviation.as_ref().unwrap();
            let subject = match d.subject.as_ref().unwrap() {
                pb::deviation::Subject::Path(p) => String::from_utf8_lossy(p).into_owned(),
                pb::deviation::Subject::Package(p) => p.name.clone(),
            };
            (c.change(), d.kind.clone(), subject)
        })
        .collect()
}

async fn run_once(config: Config) {
    tokio::time::timeout(
        Duration::from_secs(30),
        driftwatch_agent::run::run(config, std::future::pending()),
    )
    .await
    .expect("run --once did not finish")
    .unwrap();
}

/// Polls `cond` until it holds or `limit` passes.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_sends_a_snapshot_then_only_what_changed() {
    let host = Host::new();
    let fake = FakeCollector::new(true);
    let (listener, addr) = listen().await;
    let server = serve(&fake, listener);

    std::fs::write(host.root.join("usr/bin/nc"), b"netcat").unwrap();
    std::fs::write(host.root.join("etc/app.conf"), b"port = 8080\n").unwrap();
    run_once(host.config(addr)).await;
    {
        let log = fake.log();
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        let hello = &log.hellos[0];
        assert_eq!(hello.host_id, "host-1");
        assert_eq!(
            (hello.image_id.as_str(), hello.image_version.as_str()),
            ("web", "1.4.2")
        );
        assert_eq!(hello.image_build_time_unix, 1_700_000_000);
        assert_eq!(hello.manifest_digest.len(), 32);
        assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
        assert_ne!(hello.state_epoch, 0);
        assert!(hello.boot_time_unix > 0);
        assert_eq!(log.applied.len(), 1);
        let first = &log.applied[&1];
        assert_eq!(first.scan_id, 1);
        let end = first.scan_end.as_ref().unwrap();
        assert!(
            end.snapshot,
            "a fresh state directory starts with a snapshot"
        );
        assert!(!end.metadata_only);
        assert!(end.drift_pct > 0.0);
        assert_eq!(end.deviating_items, 2);
        assert_eq!(
            changes(first),
            [
                (Change::New, "added".into(), "usr/bin/nc".into()),
                (Change::New, "modified".into(), "etc/app.conf".into()),
            ]
        );
    }
    assert_eq!(host.spooled(), 0, "acknowledged reports leave the spool");

    // The hot-patch is reverted, a new binary is dropped: only that is sent.
    std::fs::write(host.root.join("etc/app.conf"), b"port = 80\n").unwrap();
    std::fs::write(host.root.join("usr/bin/nc"), b"netcat, patched").unwrap();
    std::fs::write(host.root.join("usr/bin/miner"), b"xmrig").unwrap();
    run_once(host.config(addr)).await;
    {
        let log = fake.log();
        assert!(log.violations.is_empty(), "{:?}", log.violations);
        assert_eq!(log.hellos.len(), 2);
        assert_eq!(log.hellos[0].state_epoch, log.hellos[1].state_epoch);
        let second = &log.applied[&2];
        assert_eq!(second.scan_id, 2);
        assert!(!second.scan_end.as_ref().unwrap().snapshot);
        assert_eq!(
            changes(second),
            [
                (Change::New, "added".into(), "usr/bin/miner".into()),
                (Change::Changed, "added".into(), "usr/bin/nc".into()),
                (Change::Resolved, "modified".into(), "etc/app.conf".into()),
            ]
        );
        let resolved = second.changes[2].deviation.as_ref().unwrap();
        assert_eq!((&resolved.expected, &resolved.actual), (&None, &None));
    }

    // Nothing changed: still one report, with the scan's end.
    run_once(host.config(addr)).await;
    {
        let log = fake.log();
        let third = &log.applied[&3];
        assert!(third.changes.is_empty());
        assert!(third.scan_end.is_some());
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_spooled_while_the_collector_is_down_are_delivered_when_it_comes_up() {
    let host = Host::new();
    std::fs::write(host.root.join("usr/bin/nc"), b"netcat").unwrap();
    // A port with nothing listening yet.
    let (listener, addr) = listen().await;
    drop(listener);
    let agent = tokio::spawn(driftwatch_agent::run::run(
        host.config(addr),
        std::future::pending(),
    ));
    assert!(
        eventually(Duration::from_secs(10), || host.spooled() == 1).await,
        "the scan is spooled while the collector is down"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!agent.is_finished(), "--once waits for the collector");

    let fake = FakeCollector::new(true);
    let server = serve(&fake, TcpListener::bind(addr).await.unwrap());
    tokio::time::timeout(Duration::from_secs(40), agent)
        .await
        .expect("delivered after the collector came up")
        .unwrap()
        .unwrap();
    let log = fake.log();
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    assert_eq!(log.applied.keys().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(host.spooled(), 0);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_reports_are_replayed_after_a_restart_with_the_same_seqs() {
    let host = Host::new();
    std::fs::write(host.root.join("usr/bin/nc"), b"netcat").unwrap();
    let silent = FakeCollector::new(false);
    let (listener, addr) = listen().await;
    let server = serve(&silent, listener);
    let log = Arc::clone(&silent.log);
    // A collector that never acknowledges: the agent is stopped once the
    // report is across.
    let stop = async move {
        while log.lock().unwrap().received.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(
        Duration::from_secs(30),
        driftwatch_agent::run::run(host.config(addr), stop),
    )
    .await
    .unwrap()
    .unwrap();
    server.abort();
    assert_eq!(host.spooled(), 1, "unacknowledged: still spooled");
    let sent_before = silent.log().received[0].clone();

    // The collector lost it (say it crashed before committing): it comes
    // back knowing nothing and gets the same report again, then the new
    // scan's.
    let fresh = FakeCollector::new(true);
    let (listener, addr) = listen().await;
    let server = serve(&fresh, listener);
    std::fs::remove_file(host.root.join("usr/bin/nc")).unwrap();
    run_once(host.config(addr)).await;
    let log = fresh.log();
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    assert_eq!(log.applied[&1], sent_before);
    assert_eq!(
        changes(&log.applied[&2]),
        [(Change::Resolved, "added".into(), "usr/bin/nc".into())]
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_drops_the_oldest_and_the_next_snapshot_says_how_many() {
    let host = Host::new();
    for i in 0..5 {
        std::fs::write(host.root.join(format!("usr/bin/tool{i}")), b"x").unwrap();
    }
    let (listener, addr) = listen().await;
    drop(listener);
    // Scans every 100 ms with the collector down, into a spool that holds
    // about three reports.
    let mut config = host.config(addr);
    config.once = false;
    config.interval = Duration::from_millis(100);
    config.spool_max_bytes = 1500;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(driftwatch_agent::run::run(config, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The hosts drifts further while the collector is away.
    std::fs::write(host.root.join("usr/bin/late"), b"x").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let fake = FakeCollector::new(true);
    let server = serve(&fake, TcpListener::bind(addr).await.unwrap());
    assert!(
        eventually(Duration::from_secs(40), || {
            let log = fake.log();
            log.applied.len() >= 3 && host.spooled() == 0
        })
        .await,
        "spool delivered"
    );
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    let log = fake.log();
    assert!(log.violations.is_empty(), "{:?}", log.violations);
    let seqs: Vec<u64> = log.applied.keys().copied().collect();
    assert!(seqs[0] > 1, "the oldest reports were dropped: {seqs:?}");
    // The report right after each gap is a snapshot that counts the gap
    // exactly (the collector records max(gap, dropped_reports)); no other
    // report counts anything.
    let mut previous = 0;
    for (&seq, report) in &log.applied {
        let gap = seq - previous - 1;
        assert_eq!(
            report.dropped_reports, gap,
            "report {seq} after {previous}: {seqs:?}"
        );
        if gap > 0 {
            let end = report.scan_end.as_ref().unwrap();
            assert!(end.snapshot, "the report after a gap is a snapshot");
            assert_eq!(report.changes.len(), end.deviating_items as usize);
            assert!(report.changes.iter().all(|c| c.change() == Change::New));
        }
        previous = seq;
    }
    // The late file arrived, as part of a snapshot or as NEW in a diff.
    let any_late = log
        .applied
        .values()
        .flat_map(changes)
        .any(|(_, _, path)| path == "usr/bin/late");
    assert!(any_late, "{seqs:?}");
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_on_an_idle_session() {
    let host = Host::new();
    let fake = FakeCollector::new(true);
    let (listener, addr) = listen().await;
    let server = serve(&fake, listener);
    let mut config = host.config(addr);
    config.once = false;
    config.heartbeat = Duration::from_millis(100);
    let log = Arc::clone(&fake.log);
    let stop = async move {
        while log.lock().unwrap().heartbeats < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(
        Duration::from_secs(20),
        driftwatch_agent::run::run(config, stop),
    )
    .await
    .expect("heartbeats arrive")
    .unwrap();
    assert!(fake.log().violations.is_empty());
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_a_slow_scan_promptly_and_spools_nothing_of_it() {
    let host = Host::new();
    // 8 MiB at 256 KiB/s would take half a minute.
    std::fs::write(host.root.join("usr/bin/big"), vec![7u8; 8 << 20]).unwrap();
    let (listener, addr) = listen().await;
    drop(listener);
    let mut config = host.config(addr);
    config.once = false;
    config.max_read_rate = Some(256 * 1024);
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        driftwatch_agent::run::run(config, tokio::time::sleep(Duration::from_millis(500))),
    )
    .await
    .expect("stopped")
    .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(host.spooled(), 0);
}

#[tokio::test]
async fn a_second_agent_on_the_same_state_directory_is_refused() {
    let host = Host::new();
    let (listener, addr) = listen().await;
    drop(listener);
    let mut config = host.config(addr);
    config.once = false;
    let first = tokio::spawn(driftwatch_agent::run::run(
        config.clone(),
        tokio::time::sleep(Duration::from_secs(3)),
    ));
    assert!(eventually(Duration::from_secs(5), || host.state.join("lock").exists()).await);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = driftwatch_agent::run::run(config, std::future::pending()).await;
    let error = second.unwrap_err().to_string();
    assert!(error.contains("already using"), "{error}");
    first.abort();
}

/// The real binary: `run --once` delivers and exits 0, logging each step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_delivers_once_and_exits_zero() {
    let host = Host::new();
    std::fs::write(host.root.join("usr/bin/nc"), b"netcat").unwrap();
    let fake = FakeCollector::new(true);
    let (listener, addr) = listen().await;
    let server = serve(&fake, listener);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_driftwatch-agent"))
        .args(["run", "--once", "--host-id", "cli-host", "--collector"])
        .arg(format!("http://{addr}"))
        .arg("--root")
        .arg(&host.root)
        .arg("--manifest")
        .arg(&host.manifest)
        .arg("--state-dir")
        .arg(&host.state)
        .args(["--max-read-rate", "50M", "--spool-max-bytes", "1MiB"])
        .env("RUST_LOG", "info")
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), output)
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // Shown with --nocapture: what an operator reads.
    eprintln!("{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(output.stdout.is_empty());
    for line in [
        "driftwatch agent starting",
        "scan spooled: 1 changes",
        "connected to collector",
        "every report delivered",
        "driftwatch agent stopped",
    ] {
        assert!(stderr.contains(line), "no {line:?} in:\n{stderr}");
    }
    assert_eq!(fake.log().hellos[0].host_id, "cli-host");
    assert_eq!(fake.log().applied.len(), 1);
    server.abort();
}

/// SIGTERM stops the agent promptly with exit 0, even mid-scan and with the
/// collector unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stops_promptly_on_sigterm() {
    let host = Host::new();
    std::fs::write(host.root.join("usr/bin/big"), vec![1u8; 8 << 20]).unwrap();
    let (listener, addr) = listen().await;
    drop(listener);
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_driftwatch-agent"))
        .args(["run", "--collector"])
        .arg(format!("http://{addr}"))
        .arg("--root")
        .arg(&host.root)
        .arg("--manifest")
        .arg(&host.manifest)
        .arg("--state-dir")
        .arg(&host.state)
        .args(["--max-read-rate", "256KiB"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap() as i32;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let started = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(5), child.wait_with_output())
        .await
        .expect("exited")
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("shutdown signal received"), "{stderr}");
    assert_eq!(host.spooled(), 0, "the abandoned scan spooled nothing");
}

/// A configuration that cannot work is refused at once, with exit 2.
#[test]
fn bad_configurations_exit_two_with_a_clear_message() {
    let host = Host::new();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("ca.pem");
    std::fs::write(
        &pem,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let pem = pem.to_str().unwrap();
    let root = host.root.to_str().unwrap();
    let manifest = host.manifest.to_str().unwrap();
    let state = host.state.to_str().unwrap();
    let base = [
        "run",
        "--root",
        root,
        "--manifest",
        manifest,
        "--state-dir",
        state,
    ];
    let cases: [(&[&str], &str); 6] = [
        (&["--collector", "https://c:1"], "https:// needs --tls-ca"),
        (
            &[
                "--collector",
                "https://c:1",
                "--tls-ca",
                pem,
                "--tls-cert",
                pem,
            ],
            "give both or neither",
        ),
        (
            &["--collector", "http://c:1", "--tls-ca", pem],
            "needs an https:// URL",
        ),
        (&["--collector", "c:1"], "http:// or https://"),
        (
            &["--collector", "http://c:1", "--interval", "soon"],
            "--interval",
        ),
        (
            &["--collector", "http://c:1", "--host-id", "a\tb"],
            "--host-id",
        ),
    ];
    for (extra, message) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_driftwatch-agent"))
            .args(base)
            .args(extra)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
    }
}
