//! The scheduler's workflow against a real collector: the queue with its
//! disruption budget, take / retire over the CLI and the HTTP API, a
//! retired host that comes back, superseded images, and the README's
//! scheduler loop run as written.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use driftwatch_e2e::collector::Collector;
use driftwatch_e2e::runtime;
use driftwatch_e2e::sim::{self, Session};
use driftwatch_proto::pb::v1 as pb;

const TOKEN: &str = "scheduler-token-0123456789";

/// Hosts that each report one critical change (a binary added under
/// usr/bin), plus `extra` drift items to give them different priorities.
async fn flag(url: &str, hosts: &[(&str, u64)]) {
    for (host, extra) in hosts {
        let mut s = Session::open(sim::channel(url).await, 1 << 26, sim::hello(host))
            .await
            .unwrap();
        let mut nc = sim::added(0);
        if let Some(pb::deviation::Subject::Path(p)) = &mut nc.deviation.as_mut().unwrap().subject {
            *p = b"usr/bin/nc".to_vec();
        }
        let mut changes = vec![nc];
        changes.extend((1..=*extra).map(sim::added));
        let n = changes.len() as u64;
        s.send(sim::report(
            s.last_applied_seq + 1,
            1,
            changes,
            Some((n, 100)),
        ))
        .await;
        s.wait_ack(s.last_applied_seq + 1).await.unwrap();
    }
}

fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (
        status,
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

fn start(dir: &std::path::Path, http: SocketAddr, config: &str) -> Collector {
    let config_path = dir.join("collector.toml");
    std::fs::write(&config_path, config).unwrap();
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    Collector::start(
        &dir.join("data"),
        &[
            "--config",
            config_path.to_str().unwrap(),
            "--http",
            &http.to_string(),
            "--http-token-file",
            token.to_str().unwrap(),
        ],
    )
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[test]
fn the_budget_holds_hosts_back_and_take_retire_works_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let http_addr = free_port();
    let collector = start(dir.path(), http_addr, "[queue]\nmax_draining = 1\n");
    runtime().block_on(flag(&collector.url(), &[("a", 5), ("b", 1), ("c", 3)]));

    let queue = collector.cli_json(&["queue"]);
    let order: Vec<(&str, bool)> = queue["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["host_id"].as_str().unwrap(),
                h["held_back"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(order, [("a", false), ("c", true), ("b", true)], "{queue:#}");
    assert!(
        queue["hosts"][1]["held_reason"]
            .as_str()
            .unwrap()
            .contains("fleet budget"),
        "{queue:#}"
    );

    // Changes over HTTP need the token.
    assert_eq!(http(http_addr, "POST", "/api/v1/queue/take", None).0, 401);
    assert_eq!(
        http(
            http_addr,
            "POST",
            "/api/v1/queue/take",
            Some("wrong-token-0000000")
        )
        .0,
        401
    );
    let (status, taken) = http(http_addr, "POST", "/api/v1/queue/take", Some(TOKEN));
    assert_eq!(
        (status, taken["host_id"].as_str()),
        (200, Some("a")),
        "{taken:#}"
    );
    assert_eq!(taken["queue_state"], "draining");
    // The budget is spent: nothing more to take, and the answer says why.
    let (status, none) = http(http_addr, "POST", "/api/v1/queue/take", Some(TOKEN));
    assert_eq!(status, 409, "{none:#}");
    assert!(
        none["error"].as_str().unwrap().contains("held back"),
        "{none:#}"
    );
    // The CLI agrees: exit 0, nothing taken.
    let out = collector.cli(&["take", "--by", "cli"]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to take"));

    // Retired: the next one may go.
    let (status, retired) = http(http_addr, "POST", "/api/v1/hosts/a/retire", Some(TOKEN));
    assert_eq!((status, retired["status"].as_str()), (200, Some("retired")));
    let (status, next) = http(http_addr, "POST", "/api/v1/queue/take", Some(TOKEN));
    assert_eq!((status, next["host_id"].as_str()), (200, Some("c")));
    // Given back, then taken by name.
    let released = collector.cli_json(&["release", "c"]);
    assert_eq!(released["queue_state"], "flagged");
    let drained = collector.cli_json(&["drain", "c", "--by", "ops"]);
    assert_eq!(drained["queue_state"], "draining");
    assert_eq!(drained["drained_by"], "ops");

    // A retired host that comes back is flagged again.
    runtime().block_on(flag(&collector.url(), &[("a", 0)]));
    let a = collector.cli_json(&["host", "a"]);
    assert_eq!(a["status"], "active");
    let codes: Vec<&str> = a["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"returned"), "{a:#}");
}

#[test]
fn hosts_on_a_superseded_image_are_flagged_after_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start(
        dir.path(),
        free_port(),
        "[replacement]\nsuperseded_grace = \"2s\"\n",
    );
    let url = collector.url();
    runtime().block_on(async {
        // A clean host on image sim 1 (the simulated agents' digest).
        let mut s = Session::open(sim::channel(&url).await, 1 << 26, sim::hello("old"))
            .await
            .unwrap();
        s.send(sim::report(1, 1, vec![], Some((0, 100)))).await;
        s.wait_ack(1).await.unwrap();
        let mut fleet = pb::fleet_service_client::FleetServiceClient::new(sim::channel(&url).await);
        let image = |digest: u8, version: &str, built: i64| pb::RegisterImageRequest {
            manifest_digest: vec![digest; 32],
            image_id: "sim".into(),
            image_version: version.into(),
            build_time_unix: built,
            ..Default::default()
        };
        fleet
            .register_image(image(7, "1", sim::now() - 1000))
            .await
            .unwrap();
        fleet
            .register_image(image(8, "2", sim::now() - 10))
            .await
            .unwrap();
    });
    let host = collector.cli_json(&["host", "old"]);
    assert_eq!(host["flagged"], false, "within the grace period: {host:#}");
    std::thread::sleep(Duration::from_secs(3));
    let host = collector.cli_json(&["host", "old"]);
    assert_eq!(host["reasons"][0]["code"], "superseded", "{host:#}");
    assert!(
        host["reasons"][0]["message"]
            .as_str()
            .unwrap()
            .contains("superseded by 2")
    );
    let images = collector.cli_json(&["images", "list"]);
    assert_eq!(images[0]["superseded_by"], "2", "{images:#}");
    assert_eq!(images[1]["superseded_by"], serde_json::Value::Null);
}

#[test]
fn the_readme_scheduler_loop_retires_every_flagged_host_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let collector = start(dir.path(), free_port(), "[queue]\nmax_draining = 1\n");
    runtime().block_on(flag(&collector.url(), &[("x1", 0), ("x2", 0), ("x3", 0)]));
    let bin_dir = driftwatch_e2e::collector_bin().parent().unwrap();
    // As in the README, with the replacement itself stubbed by `echo`.
    let script = r#"
        while host=$(driftwatch-collector take --by reaper --server "$SERVER" | cut -d' ' -f1)
              [ -n "$host" ]; do
            echo "replacing $host"
            driftwatch-collector retire "$host" --server "$SERVER" > /dev/null
        done
    "#;
    let out = std::process::Command::new("sh")
        .arg("-ec")
        .arg(script)
        .env(
            "PATH",
            format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap()),
        )
        .env("SERVER", collector.url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "replacing x1\nreplacing x2\nreplacing x3\n"
    );
    let hosts = collector.cli_json(&["hosts"]);
    assert!(
        hosts
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["status"] == "retired"),
        "{hosts:#}"
    );
}
