//! Security alerts between real processes: a real agent drifts, a real
//! collector alerts a webhook receiver and a syslog receiver on loopback,
//! once per new deviation, signed, and without losing or repeating an alert
//! across a collector killed while a receiver was failing.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use driftwatch_e2e::bake;
use driftwatch_e2e::collector::Collector;
use driftwatch_e2e::running_agent::RunningAgent;

const HOST: &str = "alert-host";
const SECRET: &str = "a-webhook-secret-for-tests";

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Hook {
    headers: HashMap<String, String>,
    body: Vec<u8>,
    answered: u16,
}

/// A webhook receiver: a plain HTTP/1.1 server on loopback that records
/// every request and answers with the status currently set.
struct Receiver {
    addr: SocketAddr,
    hooks: Arc<Mutex<Vec<Hook>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hooks = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let (h, s) = (hooks.clone(), status.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut headers = HashMap::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = header.trim_end().split_once(": ") {
                        headers.insert(k.to_ascii_lowercase(), v.to_string());
                    }
                }
                let length = headers
                    .get("content-length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0);
                let mut body = vec![0; length];
                let _ = reader.read_exact(&mut body);
                let answered = s.load(Ordering::SeqCst);
                h.lock().unwrap().push(Hook {
                    headers,
                    body,
                    answered,
                });
                let _ = write!(
                    stream,
                    "HTTP/1.1 {answered} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
            }
        });
        Receiver {
            addr,
            hooks,
            status,
        }
    }

    fn hooks(&self) -> Vec<Hook> {
        self.hooks.lock().unwrap().clone()
    }

    /// Alert ids the receiver accepted (answered 2xx), with how often.
    fn accepted(&self) -> HashMap<String, usize> {
        let mut ids = HashMap::new();
        for hook in self.hooks().iter().filter(|h| h.answered < 300) {
            *ids.entry(hook.headers["x-driftwatch-alert-id"].clone())
                .or_default() += 1;
        }
        ids
    }

    fn wait_accepted(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.accepted().len() < n {
            assert!(
                Instant::now() < deadline,
                "only {} alerts accepted: {:?}",
                self.accepted().len(),
                self.hooks()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn json(hook: &Hook) -> serde_json::Value {
    serde_json::from_slice(&hook.body).unwrap()
}

struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    manifest: PathBuf,
    state: PathBuf,
    data: PathBuf,
    config: PathBuf,
}

fn setup(webhook: SocketAddr, syslog: SocketAddr) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    for d in ["etc", "usr/bin"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(root.join("etc/machine-id"), format!("{HOST}\n")).unwrap();
    std::fs::write(root.join("etc/app.conf"), "a\n").unwrap();
    let manifest = dir.path().join("m.dwm");
    bake(&root, &manifest, "web", "");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let config = dir.path().join("collector.toml");
    std::fs::write(
        &config,
        format!(
            "[[alerts.webhooks]]\nname = \"soc\"\nurl = \"http://{webhook}/hook\"\nsecret_file = \"{}\"\n\n\
             [[alerts.syslog]]\nname = \"siem\"\nurl = \"udp://{syslog}\"\nfacility = \"auth\"\n",
            secret.display()
        ),
    )
    .unwrap();
    Setup {
        state: dir.path().join("state"),
        data: dir.path().join("data"),
        root,
        manifest,
        config,
        _dir: dir,
    }
}

fn agent(s: &Setup, url: &str) -> RunningAgent {
    let mut args = RunningAgent::args(url, &s.root, &s.manifest, &s.state);
    args.extend(["--interval".into(), "1s".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    RunningAgent::start(&args)
}

fn write(root: &Path, path: &str, text: &str) {
    std::fs::write(root.join(path), text).unwrap();
}

#[test]
fn each_new_deviation_alerts_once_signed_to_webhook_and_syslog() {
    let receiver = Receiver::start();
    let syslog = UdpSocket::bind("127.0.0.1:0").unwrap();
    syslog
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let s = setup(receiver.addr, syslog.local_addr().unwrap());
    write(&s.root, "usr/bin/nc", "#!/bin/sh\n");
    write(&s.root, "etc/app.conf", "b\n");
    let config = s.config.display().to_string();
    let collector = Collector::start(&s.data, &["--config", &config]);
    let agent = agent(&s, &collector.url());

    receiver.wait_accepted(2, Duration::from_secs(60));
    // Several more scans find the same deviations: no more alerts.
    let scans = agent.count("scan spooled");
    agent.wait_for("scan spooled", scans + 3, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 2, "{:?}", receiver.hooks());
    assert!(accepted.values().all(|n| *n == 1), "{accepted:?}");

    let mut by_path = HashMap::new();
    for hook in receiver.hooks() {
        let h = &hook.headers;
        assert_eq!(h["content-type"], "application/json");
        assert!(
            driftwatch_collector::alerts::verify_signature(
                SECRET.as_bytes(),
                &h["x-driftwatch-timestamp"],
                &hook.body,
                &h["x-driftwatch-signature"],
            ),
            "signature does not verify: {h:?}"
        );
        let body = json(&hook);
        assert_eq!(body["host_id"], HOST);
        assert_eq!(body["id"], h["x-driftwatch-alert-id"].as_str());
        by_path.insert(body["path"].as_str().unwrap().to_string(), body);
    }
    assert_eq!(by_path["usr/bin/nc"]["kind"], "added");
    assert_eq!(by_path["usr/bin/nc"]["severity"], "high");
    assert_eq!(by_path["etc/app.conf"]["kind"], "modified");
    assert_eq!(by_path["etc/app.conf"]["severity"], "medium");

    // The same two, as RFC 5424 over UDP.
    let mut lines = Vec::new();
    let mut buf = [0u8; 4096];
    while lines.len() < 2 {
        let n = syslog.recv(&mut buf).expect("a syslog datagram");
        lines.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    lines.sort();
    // auth (4) * 8 + crit (2) = 34 for high; + warning (4) = 36 for medium.
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<34>1 ") && l.contains("usr/bin/nc")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("<36>1 ") && l.contains("etc/app.conf")),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains(&format!("host_id=\"{HOST}\""))),
        "{lines:?}"
    );
}

#[test]
fn an_undelivered_alert_survives_a_collector_kill_and_is_delivered_once() {
    let receiver = Receiver::start();
    let syslog = UdpSocket::bind("127.0.0.1:0").unwrap();
    let s = setup(receiver.addr, syslog.local_addr().unwrap());
    let config = s.config.display().to_string();
    let mut collector = Collector::start(&s.data, &["--config", &config]);
    let agent = agent(&s, &collector.url());
    agent.wait_for("connected to collector", 1, Duration::from_secs(30));

    // The receiver is failing when the deviation appears.
    receiver.status.store(503, Ordering::SeqCst);
    write(&s.root, "usr/bin/backdoor", "x");
    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.hooks().is_empty() {
        assert!(Instant::now() < deadline, "no delivery attempt");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(receiver.accepted().is_empty());
    // Killed with the alert still in the outbox.
    collector.kill();
    receiver.status.store(200, Ordering::SeqCst);
    collector.restart();

    receiver.wait_accepted(1, Duration::from_secs(60));
    let scans = agent.count("scan spooled");
    agent.wait_for("scan spooled", scans + 3, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(2));
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1, "{:?}", receiver.hooks());
    assert!(
        accepted.values().all(|n| *n == 1),
        "delivered once: {accepted:?}"
    );
    let failed = receiver
        .hooks()
        .iter()
        .filter(|h| h.answered == 503)
        .count();
    assert!(failed >= 1);
    let delivered = receiver
        .hooks()
        .into_iter()
        .find(|h| h.answered == 200)
        .unwrap();
    assert_eq!(json(&delivered)["path"], "usr/bin/backdoor");
}
