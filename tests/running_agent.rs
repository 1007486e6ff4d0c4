//! A real `driftwatch-agent run` process for tests, with its log captured.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::agent_bin;

#[derive(Debug)]
pub struct RunningAgent {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl RunningAgent {
    /// `driftwatch-agent run` with `args`, logging at info.
    pub fn start(args: &[&str]) -> RunningAgent {
        let mut child = Command::new(agent_bin())
            .arg("run")
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start driftwatch-agent run");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        RunningAgent { child, log }
    }

    /// The usual arguments for watching `root` with state in `state`.
    pub fn args(url: &str, root: &Path, manifest: &Path, state: &Path) -> Vec<String> {
        vec![
            "--collector".into(),
            url.into(),
            "--root".into(),
            root.display().to_string(),
            "--manifest".into(),
            manifest.display().to_string(),
            "--state-dir".into(),
            state.display().to_string(),
            "--heartbeat".into(),
            "1s".into(),
        ]
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// How many log lines contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Waits until the log has `n` lines containing `needle`.
    pub fn wait_for(&self, needle: &str, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "agent never logged {needle:?} {n} times:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the process to exit on its own.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("agent did not exit in {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        self.kill();
    }
}
