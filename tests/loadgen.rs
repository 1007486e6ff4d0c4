//! Load generator: N simulated agents, each on its own gRPC connection over
//! loopback, against a real `driftwatch-collector` process.
//!
//! ```text
//! cargo bench -p driftwatch-e2e --bench loadgen -- [--agents N] [--reports R] [--changes C]
//!     [--data-dir DIR]
//! ```
//!
//! Phase 1 opens every agent's session and holds them all open at once
//! (concurrent streams held, collector RSS). Phase 2 has every agent send R
//! reports of C deviation changes, pipelined as a real agent replaying its
//! spool does, and waits until each agent's last report is acknowledged:
//! an ack means the collector committed it durably (WAL, fsync). The
//! sustained rate is all changes over the time from first send to last ack.
//! Peak RSS is the collector's VmHWM at the end.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftwatch_e2e::collector::Collector;
use driftwatch_e2e::sim::{self, Session};

struct Args {
    agents: usize,
    reports: u64,
    changes: u64,
    data_dir: Option<PathBuf>,
}

fn parse() -> Args {
    let mut args = Args {
        agents: 1000,
        reports: 10,
        changes: 500,
        data_dir: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => args.agents = value().parse().expect("--agents N"),
            "--reports" => args.reports = value().parse().expect("--reports R"),
            "--changes" => args.changes = value().parse().expect("--changes C"),
            "--data-dir" => args.data_dir = Some(value().into()),
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args = parse();
    driftwatch_collector::server::raise_open_file_limit();
    let dir = match &args.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).unwrap();
            tempfile::tempdir_in(d).unwrap()
        }
        None => tempfile::tempdir().unwrap(),
    };
    let collector = Collector::start(dir.path(), &[]);
    let pid = collector.pid();
    let url = collector.url();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let idle_kib = status_kib(pid, "VmRSS:");
    rt.block_on(async {
        // Phase 1: open and hold every stream.
        let opened = Instant::now();
        let mut sessions = Vec::with_capacity(args.agents);
        let mut pending = Vec::new();
        for i in 0..args.agents {
            let url = url.clone();
            pending.push(tokio::spawn(async move {
                let channel = sim::channel(&url).await;
                Session::open(channel, 64 << 20, sim::hello(&format!("load-{i:06}")))
                    .await
                    .expect("open session")
            }));
            // Connect in waves so the accept queue never overflows.
            if pending.len() == 256 {
                for p in pending.drain(..) {
                    sessions.push(p.await.unwrap());
                }
            }
        }
        for p in pending.drain(..) {
            sessions.push(p.await.unwrap());
        }
        let open_secs = opened.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let held_kib = status_kib(pid, "VmRSS:");
        println!(
            "streams held: {} (opened in {open_secs:.2}s); collector RSS idle {:.1} MiB, holding {:.1} MiB ({:.1} KiB/stream)",
            sessions.len(),
            idle_kib as f64 / 1024.0,
            held_kib as f64 / 1024.0,
            (held_kib.saturating_sub(idle_kib)) as f64 / sessions.len() as f64
        );

        // Phase 2: every agent sends its reports, pipelined.
        let start = Arc::new(tokio::sync::Barrier::new(args.agents + 1));
        let mut tasks = Vec::new();
        for (a, mut s) in sessions.into_iter().enumerate() {
            let start = start.clone();
            let (reports, changes) = (args.reports, args.changes);
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                for r in 0..reports {
                    let base = r * changes;
                    let batch = (base..base + changes).map(sim::added).collect();
                    let end = (r + 1 == reports).then_some((reports * changes, 1_000_000));
                    s.send(sim::report(r + 1, 1, batch, end)).await;
                }
                s.wait_ack(reports)
                    .await
                    .unwrap_or_else(|e| panic!("agent {a}: {e}"));
                s
            }));
        }
        start.wait().await;
        let sent = Instant::now();
        let mut done = Vec::new();
        for t in tasks {
            done.push(t.await.unwrap());
        }
        let secs = sent.elapsed().as_secs_f64();
        let events = args.agents as u64 * args.reports * args.changes;
        println!(
            "ingested {events} deviation events ({} reports) with durable acks in {secs:.2}s: {:.0} events/s, {:.0} reports/s",
            args.agents as u64 * args.reports,
            events as f64 / secs,
            (args.agents as u64 * args.reports) as f64 / secs
        );
        println!(
            "collector peak RSS (VmHWM): {:.1} MiB",
            status_kib(pid, "VmHWM:") as f64 / 1024.0
        );
        drop(done);
        // Fleet-wide findings scan every stored deviation (no index, by
        // design): how long the first, uncached answer takes here.
        let mut fleet = driftwatch_proto::pb::v1::fleet_service_client::FleetServiceClient::new(
            sim::channel(&url).await,
        )
        .max_decoding_message_size(256 << 20);
        let asked = Instant::now();
        let findings = fleet
            .list_findings(driftwatch_proto::pb::v1::ListFindingsRequest { min_hosts: 2 })
            .await
            .expect("list findings")
            .into_inner()
            .findings;
        println!(
            "findings over {events} stored deviations: {} groups in {:.2}s",
            findings.len(),
            asked.elapsed().as_secs_f64()
        );
    });
    drop(collector);
}
