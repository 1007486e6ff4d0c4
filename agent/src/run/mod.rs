//! `driftwatch-agent run`: the long-lived agent. It verifies the host at
//! start and every `--interval`, turns each scan into changes since the
//! previous one, spools them durably, and streams them to the collector.
//!
//! # Layout
//! - [`config`]: the validated configuration (collector URL and TLS,
//!   durations, sizes).
//! - [`identity`]: host id (machine id, else hostname), hostname, boot time.
//! - [`wire`]: the verify report's deviations as `driftwatch.v1` messages.
//! - [`changes`]: one scan against the previous: NEW, CHANGED, RESOLVED,
//!   snapshots, and reports of bounded size.
//! - [`spool`]: the durable, bounded spool and the state that makes
//!   delivery exactly-once across crashes.
//! - [`session`]: the gRPC session: Hello, Welcome, replay, acks,
//!   heartbeats, reconnects with backoff.
//! - [`priority`]: nice 19 and the idle IO class.
//!
//! # Tasks
//! [`run`] is the scan loop; the session runs beside it as one task. They
//! share only the spool ([`spool::SharedSpool`]): the scan loop commits,
//! the session reads, sends and deletes what is acknowledged. Shutdown is
//! one `watch` flag, fanned out: the scan in progress is abandoned (its
//! workers stop at the next file; nothing of it was spooled), a spool
//! commit in progress finishes (it takes milliseconds, and is atomic
//! anyway), and the session closes its stream.

pub mod changes;
pub mod config;
pub mod identity;
pub mod priority;
pub mod session;
pub mod spool;
pub mod wire;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use driftwatch_proto::manifest::codec::Decoded;
use driftwatch_proto::pb::v1 as pb;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::bake::{ReadManifestError, read_manifest};
use crate::report::Report;
use crate::scan::{ContentMode, ScanError, ScanOptions};
use crate::throttle::ReadLimit;
use crate::verify::{self, VerifyError};
use changes::{ChangeCounts, DeviationSet};
use config::Config;
use identity::{HostIdSource, Identity, IdentityError};
use spool::{SharedSpool, Spool, SpoolError};

pub use config::ConfigError;

/// How long each step of stopping (the scan loop, the session, releasing
/// the spool) may take after shutdown is signalled; each normally takes
/// milliseconds, and all three stay within the 2 s a service manager
/// allows.
const STOP_GRACE: Duration = Duration::from_millis(500);

/// Why the agent stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Manifest(#[from] ReadManifestError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("cannot verify: {0}")]
    Verify(#[from] VerifyError),
}

/// Runs the agent until `shutdown` resolves (or, with `--once`, until the
/// first scan is delivered). Call [`priority::lower`] first, before the
/// runtime starts, if the agent should yield to the workload.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), RunError> {
    config.validate()?;
    let manifest = Arc::new(read_manifest(&config.manifest)?);
    let identity = identity::resolve(config.host_id.as_deref(), &config.root)?;
    let (spool, recovered) = Spool::open(&config.state_dir, config.spool_max_bytes)?;

    let epoch = spool.state_epoch();
    let spool = SharedSpool::new(spool);
    let hello = hello(&identity, &manifest, epoch);
    info!(
        host_id = %hello.host_id,
        image_id = %hello.image_id,
        image_version = %hello.image_version,
        manifest_digest = %manifest.digest.to_hex(),
        collector = config.collector.url(),
        state_dir = %config.state_dir.display(),
        state_epoch = epoch,
        interval = %humantime::format_duration(config.interval),
        threads = config.threads,
        max_read_rate = config.max_read_rate,
        once = config.once,
        "driftwatch agent starting"
    );
    log_identity(&identity);
    log_recovery(&config.state_dir, &recovered);

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut session = tokio::spawn(session::maintain(
        config.collector.clone(),
        hello,
        config.heartbeat,
        spool.clone(),
        stop_rx.clone(),
    ));

    let mut scanning = Box::pin(scan_loop(&config, &manifest, &spool, stop_rx));
    tokio::pin!(shutdown);
    // A JoinHandle must not be polled again once it has completed.
    let mut session_finished = false;
    let result = tokio::select! {
        r = &mut scanning => r,
        () = &mut shutdown => {
            info!("shutdown signal received; stopping");
            let _ = stop_tx.send(true);
            // The scan loop stops at once, except that a spool commit in
            // progress (milliseconds) is let finish.
            tokio::time::timeout(STOP_GRACE, &mut scanning)
                .await
                .unwrap_or(Ok(()))
        }
        // The session task never ends on its own unless it panicked.
        joined = &mut session => {
            session_finished = true;
            match joined {
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                _ => Ok(()),
            }
        }
    };
    let _ = stop_tx.send(true);
    drop(scanning);
    if !session_finished
        && tokio::time::timeout(STOP_GRACE, &mut session)
            .await
            .is_err()
    {
        session.abort();
        let _ = session.await;
    }
    let status = *spool.subscribe().borrow();
    // The state directory's lock goes with the last handle on the spool.
    spool.close(STOP_GRACE).await;
    info!(
        pending_reports = status.pending_reports,
        last_committed_seq = status.committed_seq,
        "driftwatch agent stopped"
    );
    result
}

/// Scans at start and every interval; with `--once`, scans once and waits
/// until the collector has acknowledged everything spooled. Returns on
/// shutdown (`stop` turns true).
async fn scan_loop(
    config: &Config,
    manifest: &Arc<Decoded>,
    spool: &SharedSpool,
    mut stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    let read_limit = config.max_read_rate.map(|r| Arc::new(ReadLimit::new(r)));
    let mut ticks = tokio::time::interval(config.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped(&mut stop) => return Ok(()),
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let options = ScanOptions {
            threads: config.threads,
            content: ContentMode::Hash,
            one_file_system: config.one_file_system,
            read_limit: read_limit.clone(),
            cancel: Some(Arc::clone(&cancel)),
        };
        let (root, image) = (config.root.clone(), Arc::clone(manifest));
        let scan =
            tokio::task::spawn_blocking(move || verify::verify(&root, &image, None, &options));
        let report = tokio::select! {
            joined = scan => match joined {
                Ok(report) => report,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
            _ = stopped(&mut stop) => {
                // The workers see this at their next file and stop; nothing
                // of this scan was spooled.
                cancel.store(true, Ordering::Relaxed);
                info!("scan abandoned for shutdown");
                return Ok(());
            }
        };
        let report = match report {
            Ok(report) => report,
            // A root that cannot be scanned at the first attempt is a
            // configuration error; later, a passing problem to retry.
            Err(e) if first => return Err(e.into()),
            Err(VerifyError::Scan(ScanError::Cancelled)) => return Ok(()),
            Err(e) => {
                error!(error = %e, "scan failed; retrying at the next interval");
                continue;
            }
        };
        first = false;
        match spool.with(move |s| spool_scan(s, &report)).await {
            Ok(spooled) => log_scan(&spooled),
            // The scan is lost but nothing else is: the state still holds
            // the previous baseline, so the next scan reports these changes.
            Err(e) if !config.once => {
                error!(error = %e, "cannot spool the scan; retrying at the next interval");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        if config.once {
            let mut status = spool.subscribe();
            info!(
                pending_reports = status.borrow().pending_reports,
                "--once: waiting until the collector has acknowledged every report"
            );
            tokio::select! {
                _ = async { let _ = status.wait_for(|s| s.pending_reports == 0).await; } => {
                    info!("--once: every report delivered");
                }
                _ = stopped(&mut stop) => {}
            }
            return Ok(());
        }
    }
}

/// What spooling one scan did, for its log line.
#[derive(Debug, Clone)]
pub struct Spooled {
    pub first_seq: u64,
    pub last_seq: u64,
    pub reports: usize,
    pub scan_id: u64,
    pub counts: ChangeCounts,
    pub snapshot: bool,
    /// What the scan's first report says was dropped before it.
    pub dropped_reports: u64,
    pub deviations: usize,
    pub drift_pct: f64,
    pub not_verified: usize,
    pub elapsed_secs: f64,
    pub bytes_hashed: u64,
}

/// Turns a verify report into the scan's reports and commits them: a diff
/// against the previous scan, or a snapshot when the collector may not hold
/// the previous scan. If the spool must drop old reports to make room and
/// no snapshot is left after the gap, the scan is rebuilt as a snapshot
/// carrying the count, so the collector is consistent again as soon as this
/// scan arrives.
pub fn spool_scan(spool: &mut Spool, report: &Report) -> Result<Spooled, SpoolError> {
    let now = DeviationSet::from_report(&report.deviations);
    loop {
        let snapshot = spool.snapshot_needed();
        let dropped_reports = if snapshot { spool.pending_dropped() } else { 0 };
        let changes = if snapshot {
            changes::snapshot(&now)
        } else {
            changes::diff(spool.baseline(), &now)
        };
        let counts = ChangeCounts::of(&changes);
        let mut reports =
            changes::into_reports(changes, scan_end(report, snapshot), dropped_reports);
        spool.number(&mut reports);
        let dropped = spool.make_room(Spool::stored_len(&reports))?;
        if dropped.reports > 0 {
            warn!(
                dropped_reports = dropped.reports,
                dropped_changes = dropped.changes,
                spool = %spool.path().display(),
                snapshot_next = spool.snapshot_needed(),
                "spool full (--spool-max-bytes): dropped the oldest undelivered reports"
            );
            // Rebuilt: as a snapshot if the drop left a gap nothing else
            // in the spool closes.
            continue;
        }
        let committed = spool.commit_scan(&reports, now, snapshot, dropped_reports)?;
        return Ok(Spooled {
            first_seq: committed.first_seq,
            last_seq: committed.last_seq,
            reports: committed.reports,
            scan_id: committed.first_seq,
            counts,
            snapshot,
            dropped_reports,
            deviations: report.deviations.len(),
            drift_pct: report.drift_pct(),
            not_verified: report.coverage.not_verified.len(),
            elapsed_secs: report.elapsed_secs,
            bytes_hashed: report.coverage.bytes_hashed,
        });
    }
}

fn scan_end(report: &Report, snapshot: bool) -> pb::ScanEnd {
    pb::ScanEnd {
        finished_at_unix: session::unix_now(),
        drift_pct: report.drift_pct(),
        deviating_items: report.drift.deviating,
        observed_items: report.drift.observed,
        entries_checked: report.coverage.entries_checked,
        packages_checked: report.coverage.packages_checked,
        not_verified: report.coverage.not_verified.len() as u64,
        elapsed_secs: report.elapsed_secs,
        snapshot,
        // `run` always hashes content.
        metadata_only: report.content_mode == ContentMode::MetadataOnly,
    }
}

fn hello(identity: &Identity, manifest: &Decoded, state_epoch: u64) -> pb::Hello {
    let provenance = &manifest.manifest.provenance;
    pb::Hello {
        host_id: identity.host_id.clone(),
        hostname: identity.hostname.clone(),
        image_id: provenance.image_id.clone(),
        image_version: provenance.image_version.clone(),
        manifest_digest: manifest.digest.0.to_vec(),
        boot_time_unix: identity.boot_time_unix,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        image_build_time_unix: provenance.build_time_unix,
        state_epoch,
    }
}

fn log_identity(identity: &Identity) {
    match &identity.source {
        HostIdSource::Flag => {}
        HostIdSource::MachineId => {}
        HostIdSource::Hostname { machine_id_problem } => warn!(
            problem = %machine_id_problem,
            host_id = %identity.host_id,
            "machine id unusable; using the hostname as host id (give --host-id to choose)"
        ),
    }
    if identity.boot_time_unix == 0 {
        warn!("boot time unknown: no btime in /proc/stat");
    }
}

fn log_recovery(state_dir: &std::path::Path, r: &spool::Recovered) {
    let dir = state_dir.display();
    if let Some(problem) = &r.state_unusable {
        error!(state_dir = %dir, problem = %problem, "state file unusable: starting over with a snapshot; spooled reports are kept");
    }
    if r.discarded_uncommitted > 0 {
        info!(state_dir = %dir, discarded_reports = r.discarded_uncommitted, "discarded the reports of a scan interrupted while spooling; the next scan regenerates them");
    }
    if r.corrupt > 0 {
        warn!(state_dir = %dir, dropped_reports = r.corrupt, "dropped corrupt spool files; the next scan is a snapshot");
    }
    if r.fresh {
        info!(state_dir = %dir, "new state directory: the first scan is a snapshot");
    } else {
        info!(state_dir = %dir, pending_reports = r.pending_reports, pending_bytes = r.pending_bytes, "spool recovered");
    }
}

fn log_scan(s: &Spooled) {
    info!(
        scan_id = s.scan_id,
        drift_pct = format_args!("{:.3}", s.drift_pct),
        deviations = s.deviations,
        new = s.counts.new,
        changed = s.counts.changed,
        resolved = s.counts.resolved,
        snapshot = s.snapshot,
        seqs = format_args!("{}..={}", s.first_seq, s.last_seq),
        reports = s.reports,
        dropped_reports = s.dropped_reports,
        not_verified = s.not_verified,
        bytes_hashed = s.bytes_hashed,
        elapsed_secs = format_args!("{:.2}", s.elapsed_secs),
        "scan spooled: {} changes",
        s.counts.total()
    );
}

/// Resolves once `stop` turns true (or its sender is gone). Keeps no
/// borrow of the value, so it can sit in a `select!` of a `Send` task.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Resolves on SIGTERM or SIGINT. Registers the handlers now (not when
/// first polled), so a signal that arrives during startup is not lost to
/// the default action. Must be called inside the runtime.
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Attrs, Coverage, Deviation, DeviationKind, PolicySource, Subject};
    use driftwatch_proto::{Digest, DriftCounts, Provenance};
    use pb::deviation_change::Change;

    fn added(path: &str, size: u64) -> Deviation {
        Deviation {
            kind: DeviationKind::Added,
            subject: Subject::Path(path.as_bytes().into()),
            expected: None,
            actual: Some(Attrs {
                size: Some(size),
                ..Attrs::default()
            }),
        }
    }

    fn report(deviations: Vec<Deviation>) -> Report {
        Report {
            manifest_digest: Digest([0; 32]),
            image: Provenance::default(),
            content_mode: ContentMode::Hash,
            policy_source: PolicySource::Manifest,
            drift: DriftCounts {
                deviating: deviations.len() as u64,
                observed: 100,
            },
            deviations,
            // Expected to change: never sent as drift.
            runtime_zone_changes: vec![added("etc/hostname", 3)],
            coverage: Coverage::default(),
            elapsed_secs: 0.5,
        }
    }

    fn spooled_changes(spool: &mut Spool, cursor: u64) -> Vec<(Change, u64)> {
        let report = spool.read_after(cursor).unwrap();
        report
            .changes
            .iter()
            .map(|c| {
                let d = c.deviation.as_ref().unwrap();
                (
                    c.change(),
                    d.actual.as_ref().map_or(0, |a| a.size.unwrap_or(0)),
                )
            })
            .collect()
    }

    #[test]
    fn a_fresh_agent_sends_a_snapshot_then_diffs() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), u64::MAX).unwrap();
        let first = spool_scan(&mut spool, &report(vec![added("a", 1), added("b", 2)])).unwrap();
        assert!(first.snapshot);
        assert_eq!(
            (first.counts.new, first.first_seq, first.last_seq),
            (2, 1, 1)
        );
        let second = spool_scan(&mut spool, &report(vec![added("a", 5), added("c", 3)])).unwrap();
        assert!(!second.snapshot);
        assert_eq!(
            (
                second.counts.new,
                second.counts.changed,
                second.counts.resolved
            ),
            (1, 1, 1)
        );
        let stored = spool.read_after(1).unwrap();
        let end = stored.scan_end.unwrap();
        assert!(!end.snapshot && !end.metadata_only);
        assert_eq!((end.deviating_items, end.observed_items), (2, 100));
        assert_eq!(end.drift_pct, 2.0);
        // Runtime zones never reach the collector.
        assert!(stored.changes.iter().all(|c| {
            c.deviation.as_ref().unwrap().subject
                != Some(pb::deviation::Subject::Path(b"etc/hostname".to_vec()))
        }));
    }

    #[test]
    fn a_full_spool_turns_the_scan_into_a_snapshot_that_counts_the_drops() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), u64::MAX).unwrap();
            for size in 0..4 {
                spool_scan(&mut spool, &report(vec![added("a", size)])).unwrap();
            }
        }
        let one_report = std::fs::metadata(dir.path().join("spool/00000000000000000004.report"))
            .unwrap()
            .len();
        // Room for about three more of them.
        let (mut spool, _) = Spool::open(dir.path(), one_report * 3 + one_report / 2).unwrap();
        let spooled = spool_scan(&mut spool, &report(vec![added("a", 9), added("b", 1)])).unwrap();
        assert!(spooled.snapshot);
        // Making room took the oldest, and the diffs that depended on them:
        // the snapshot comes right after the gap and counts it.
        assert_eq!(spooled.dropped_reports, 4);
        assert_eq!(spooled.counts.new, 2);
        let snapshot = spool.read_after(0).unwrap();
        assert_eq!((snapshot.seq, snapshot.dropped_reports), (5, 4));
        assert!(snapshot.scan_end.unwrap().snapshot);
        assert_eq!(
            spooled_changes(&mut spool, 0),
            [(Change::New, 9), (Change::New, 1)]
        );
        // Once the collector catches up, the next scan is a plain diff.
        spool.ack(5);
        let next = spool_scan(&mut spool, &report(vec![added("a", 9)])).unwrap();
        assert!(!next.snapshot);
        assert_eq!(next.counts.resolved, 1);
    }
}
