//! A real `driftwatch-collector serve` process for tests: started on a free
//! loopback port (or a given one, to restart it in place), killed on drop,
//! with its log kept for failure messages.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::collector_bin;

/// A running collector.
#[derive(Debug)]
pub struct Collector {
    child: Child,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    /// Extra `serve` arguments, reused on restart.
    args: Vec<String>,
    log: Arc<Mutex<Vec<String>>>,
    /// Client-side TLS arguments for the ops CLI.
    pub client_tls: Vec<String>,
}

impl Collector {
    /// Starts a collector on a free loopback port.
    pub fn start(data_dir: &Path, args: &[&str]) -> Collector {
        Collector::start_on("127.0.0.1:0".parse().unwrap(), data_dir, args)
    }

    /// Starts a collector listening on `listen`.
    pub fn start_on(listen: SocketAddr, data_dir: &Path, args: &[&str]) -> Collector {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let mut child = Command::new(collector_bin())
            .arg("serve")
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start driftwatch-collector");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("driftwatch-collector listening")
                    && let Some(addr) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("addr="))
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().ok());
                }
                lines.lock().unwrap().push(line);
            }
            let _ = tx.send(None);
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Some(addr)) => addr,
            _ => {
                let _ = child.kill();
                panic!(
                    "the collector did not start:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Collector {
            child,
            addr,
            data_dir: data_dir.to_path_buf(),
            args,
            log,
            client_tls: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        let scheme = if self.client_tls.is_empty() {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().expect("wait for the collector")
    }

    /// Starts it again on the same address and data dir.
    pub fn restart(&mut self) {
        self.kill();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        // The port was just freed; retry briefly if the kernel lags.
        loop {
            let started =
                std::panic::catch_unwind(|| Collector::start_on(self.addr, &self.data_dir, &args));
            match started {
                Ok(mut fresh) => {
                    fresh.client_tls = std::mem::take(&mut self.client_tls);
                    std::mem::swap(self, &mut fresh);
                    return;
                }
                Err(e) if Instant::now() > deadline => std::panic::resume_unwind(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Runs an ops command (`hosts`, `host ID`, ...) against it.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(collector_bin())
            .args(args)
            .arg("--server")
            .arg(self.url())
            .args(&self.client_tls)
            .output()
            .expect("run driftwatch-collector")
    }

    /// Runs an ops command with `--format json` and parses its output.
    pub fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["--format", "json"]);
        let out = self.cli(&all);
        assert!(
            out.status.success(),
            "{args:?} failed: {}\ncollector log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("JSON output")
    }

    /// Polls `hosts` until `done` accepts the host's JSON, or panics with
    /// the last value after `timeout`.
    pub fn wait_for_host(
        &self,
        host_id: &str,
        timeout: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.cli(&["host", host_id, "--format", "json"]);
            let host = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            if done(&host) {
                return host;
            }
            if Instant::now() > deadline {
                panic!(
                    "host {host_id} never reached the expected state; last:\n{host:#}\n{}\ncollector log:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.kill();
    }
}
