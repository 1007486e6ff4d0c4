//! The collector's agent protocol against a real collector process over
//! real sockets: hostile input is refused with a clear status while the
//! server keeps serving, replays are applied once, and 200 agents at once
//! all land.

use std::time::Duration;

use driftwatch_e2e::collector::Collector;
use driftwatch_e2e::runtime;
use driftwatch_e2e::sim::{self, Session, raw};
use driftwatch_proto::pb::v1 as pb;
use prost::Message as _;
use tonic::Code;

const MIB: usize = 1024 * 1024;

/// Opens a session and returns the status the collector ends it with.
async fn refused(url: &str, hello: pb::Hello, reports: Vec<pb::Report>) -> tonic::Status {
    let channel = sim::channel(url).await;
    let mut session = match Session::open(channel, 64 * MIB, hello).await {
        Ok(s) => s,
        Err(status) => return status,
    };
    let last = reports.iter().map(|r| r.seq).max().unwrap_or(0);
    for r in reports {
        session.send(r).await;
    }
    match tokio::time::timeout(Duration::from_secs(20), session.wait_ack(last + 1)).await {
        Ok(Err(status)) => status,
        Ok(Ok(())) => panic!("the collector accepted it (last seq {last})"),
        Err(_) => panic!("no answer within 20 s"),
    }
}

#[test]
fn malformed_and_oversized_messages_are_refused_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &[]);
    let url = collector.url();
    runtime().block_on(async {
        // A Hello that lies about its digest.
        let mut hello = sim::hello("bad-digest");
        hello.manifest_digest = vec![1; 5];
        let status = refused(&url, hello, vec![]).await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("32-byte BLAKE3"), "{status:?}");

        // A host id that would rewrite a terminal.
        let status = refused(&url, sim::hello("evil\u{1b}[2J"), vec![]).await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("printable ASCII"), "{status:?}");

        // A report with an unknown kind, after a good one: the good one is
        // acknowledged and stored, the bad one refused whole.
        let mut bad = sim::added(2);
        bad.deviation.as_mut().unwrap().kind = "exploded".into();
        let status = refused(
            &url,
            sim::hello("bad-kind"),
            vec![
                sim::report(1, 1, vec![sim::added(1)], None),
                sim::report(2, 1, vec![sim::added(3), bad], Some((2, 100))),
            ],
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .contains("report 2 change 1: unknown deviation kind"),
            "{status:?}"
        );

        // Sequence numbers that go backwards within a session.
        let status = refused(
            &url,
            sim::hello("backwards"),
            vec![
                sim::report(5, 1, vec![], None),
                sim::report(4, 1, vec![], None),
            ],
        )
        .await;
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("not above"), "{status:?}");

        // 5 MiB in one message: over the 4 MiB limit.
        let mut huge = sim::added(9);
        huge.deviation
            .as_mut()
            .unwrap()
            .actual
            .as_mut()
            .unwrap()
            .symlink_target = Some("x".repeat(5 * MIB));
        let status = refused(
            &url,
            sim::hello("oversized"),
            vec![sim::report(1, 1, vec![huge], None)],
        )
        .await;
        assert!(
            matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
            "{status:?}"
        );
        assert!(status.message().contains("too large"), "{status:?}");

        // Bytes that are not protobuf at all, and a Report before Hello.
        let channel = sim::channel(&url).await;
        let status = match raw::session(channel, vec![vec![0xff; 64]]).await {
            Ok(mut stream) => stream.message().await.unwrap_err(),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::Internal, "{status:?}");
        assert!(status.message().contains("decode"), "{status:?}");
        let early = sim::message(pb::agent_message::Body::Report(sim::report(
            1,
            1,
            vec![],
            None,
        )));
        let channel = sim::channel(&url).await;
        let status = match raw::session(channel, vec![early.encode_to_vec()]).await {
            Ok(mut stream) => stream.message().await.unwrap_err(),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("must be Hello"), "{status:?}");

        // Still serving: a good agent's report lands.
        let mut good = Session::open(sim::channel(&url).await, 64 * MIB, sim::hello("good"))
            .await
            .unwrap();
        good.send(sim::report(1, 1, vec![sim::added(1)], Some((1, 10))))
            .await;
        good.wait_ack(1).await.unwrap();
    });
    let hosts = collector.cli_json(&["hosts"]);
    let by_id = |id: &str| {
        hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["host_id"] == id)
            .cloned()
    };
    assert_eq!(by_id("good").unwrap()["deviation_count"], 1);
    assert_eq!(by_id("good").unwrap()["drift_pct"], 10.0);
    assert_eq!(
        by_id("bad-kind").unwrap()["deviation_count"],
        1,
        "the report before the bad one is kept, nothing of the bad one"
    );
    assert!(by_id("bad-digest").is_none());
}

#[test]
fn a_replayed_report_is_applied_once() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &[]);
    let url = collector.url();
    runtime().block_on(async {
        let mut s = Session::open(sim::channel(&url).await, 64 * MIB, sim::hello("replay"))
            .await
            .unwrap();
        assert_eq!(s.last_applied_seq, 0);
        s.send(sim::report(1, 1, vec![sim::added(1), sim::added(2)], None))
            .await;
        s.send(sim::report(2, 1, vec![sim::added(3)], Some((3, 100))))
            .await;
        s.wait_ack(2).await.unwrap();
        drop(s);
        // As after a lost ack: the agent replays 2 and goes on with 3.
        let mut s = Session::open(sim::channel(&url).await, 64 * MIB, sim::hello("replay"))
            .await
            .unwrap();
        assert_eq!(s.last_applied_seq, 2);
        let mut resolve = sim::added(1);
        resolve.change = pb::deviation_change::Change::Resolved as i32;
        s.send(sim::report(2, 1, vec![sim::added(3)], Some((3, 100))))
            .await;
        s.send(sim::report(3, 2, vec![resolve], Some((2, 100))))
            .await;
        s.wait_ack(3).await.unwrap();
    });
    let host = collector.cli_json(&["host", "replay"]);
    assert_eq!(host["deviation_count"], 2);
    assert_eq!(host["drift_pct"], 2.0);
    assert_eq!(
        host["history"].as_array().unwrap().len(),
        2,
        "two scans ended, each recorded once: {host:#}"
    );
    assert_eq!(host["dropped_reports"], 0);
}

#[test]
fn reports_an_agent_dropped_are_counted_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &[]);
    let url = collector.url();
    runtime().block_on(async {
        let mut s = Session::open(sim::channel(&url).await, 64 * MIB, sim::hello("lossy"))
            .await
            .unwrap();
        s.send(sim::report(1, 1, vec![sim::added(1)], Some((1, 10))))
            .await;
        // Reports 2 to 4 were dropped from the agent's full spool; 5 is the
        // snapshot that follows, saying so.
        let mut snapshot = sim::report(5, 5, vec![sim::added(2)], Some((1, 10)));
        snapshot.dropped_reports = 3;
        snapshot.scan_end.as_mut().unwrap().snapshot = true;
        s.send(snapshot).await;
        s.wait_ack(5).await.unwrap();
    });
    let host = collector.cli_json(&["host", "lossy"]);
    assert_eq!(host["dropped_reports"], 3, "{host:#}");
    assert_eq!(host["deviation_count"], 1, "the snapshot replaced the set");
    assert_eq!(host["deviations"][0]["path"], "opt/sim/file-2");
    let text = collector.cli(&["host", "lossy"]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("3 reports dropped"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn two_hundred_agents_at_once() {
    const AGENTS: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &[]);
    let url = collector.url();
    runtime().block_on(async {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(AGENTS));
        let mut tasks = Vec::new();
        for i in 0..AGENTS {
            let url = url.clone();
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                // One connection per agent, as on a real fleet.
                let channel = sim::channel(&url).await;
                let mut s = Session::open(channel, 64 * MIB, sim::hello(&format!("host-{i:03}")))
                    .await
                    .unwrap();
                // Every session is open before anyone reports.
                barrier.wait().await;
                let changes = (0..50).map(sim::added).collect();
                s.send(sim::report(1, 1, changes, None)).await;
                let changes = (50..100).map(sim::added).collect();
                s.send(sim::report(2, 1, changes, Some((100, 1000 + i as u64))))
                    .await;
                s.wait_ack(2).await.unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let hosts = collector.cli_json(&["hosts"]);
    let hosts = hosts.as_array().unwrap();
    assert_eq!(hosts.len(), AGENTS);
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(h["host_id"], format!("host-{i:03}"));
        assert_eq!(h["deviation_count"], 100, "{h:#}");
        let expected = driftwatch_proto::drift_pct(100, 1000 + i as u64);
        assert!(
            (h["drift_pct"].as_f64().unwrap() - expected).abs() < 1e-9,
            "{h:#}"
        );
    }
}

#[test]
fn the_same_deviation_on_several_hosts_is_one_finding() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &[]);
    let url = collector.url();
    runtime().block_on(async {
        for (i, host) in ["web-3", "web-1", "web-2"].iter().enumerate() {
            let mut s = Session::open(sim::channel(&url).await, 64 * MIB, sim::hello(host))
                .await
                .unwrap();
            // file-1 is the same hot-fix everywhere; file-10x differs per host.
            let changes = vec![sim::added(1), sim::added(100 + i as u64)];
            s.send(sim::report(1, 1, changes, Some((2, 50)))).await;
            s.wait_ack(1).await.unwrap();
        }
    });
    let findings = collector.cli_json(&["findings"]);
    let findings = findings.as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:#?}");
    assert_eq!(findings[0]["path"], "opt/sim/file-1");
    assert_eq!(findings[0]["host_count"], 3);
    assert_eq!(
        findings[0]["hosts"],
        serde_json::json!(["web-1", "web-2", "web-3"])
    );
    assert_eq!(findings[0]["kind"], "added");
    let all = collector.cli_json(&["findings", "--min-hosts", "1"]);
    assert_eq!(all.as_array().unwrap().len(), 4);
}

#[test]
fn idle_agents_cannot_starve_an_agent_with_a_report() {
    // More idle sessions than the collector has report slots (256).
    const IDLE: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start(dir.path(), &[]);
    let url = collector.url();
    runtime().block_on(async {
        let mut idle = Vec::new();
        for i in 0..IDLE {
            let channel = sim::channel(&url).await;
            idle.push(
                Session::open(channel, 64 * MIB, sim::hello(&format!("idle-{i}")))
                    .await
                    .unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut busy = Session::open(sim::channel(&url).await, 64 * MIB, sim::hello("busy"))
            .await
            .unwrap();
        busy.send(sim::report(1, 1, vec![sim::added(1)], Some((1, 10))))
            .await;
        tokio::time::timeout(Duration::from_secs(15), busy.wait_ack(1))
            .await
            .expect("the report was acknowledged while 300 agents sat idle")
            .unwrap();
        drop(idle);
    });
}
