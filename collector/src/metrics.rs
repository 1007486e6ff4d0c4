//! Prometheus metrics: counters kept in memory as events happen, and
//! per-host gauges read from the store at scrape time, rendered in the
//! text exposition format (checked by `promtool check metrics` in CI).
//!
//! Time-valued gauges are Unix timestamps in seconds, as Prometheus
//! convention asks, so ops compute ages in PromQL:
//! `(time() - driftwatch_host_instance_start_time_seconds) / 3600` is the
//! instance age in hours, `driftwatch_host_drift_ratio * 100` the drift %.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::query::HostView;
use crate::store::{HostStatus, QueueState};

/// Counters since the collector started.
#[derive(Debug, Default)]
pub struct Metrics {
    pub reports_ingested: AtomicU64,
    pub changes_ingested: AtomicU64,
    pub reports_rejected: AtomicU64,
    pub sessions_opened: AtomicU64,
    /// Per sink: (sent, failed attempts).
    alerts: Mutex<BTreeMap<String, (u64, u64)>>,
}

impl Metrics {
    pub fn count_report(&self, changes: usize) {
        self.reports_ingested.fetch_add(1, Ordering::Relaxed);
        self.changes_ingested
            .fetch_add(changes as u64, Ordering::Relaxed);
    }

    pub fn alert_sent(&self, sink: &str) {
        self.alerts
            .lock()
            .unwrap()
            .entry(sink.into())
            .or_default()
            .0 += 1;
    }

    pub fn alert_failed(&self, sink: &str) {
        self.alerts
            .lock()
            .unwrap()
            .entry(sink.into())
            .or_default()
            .1 += 1;
    }

    /// Registers a sink so its counters show as 0 before its first alert.
    pub fn alert_sink(&self, sink: &str) {
        self.alerts.lock().unwrap().entry(sink.into()).or_default();
    }
}

/// What a scrape reads besides the counters.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub hosts: &'a [HostView],
    pub connected_agents: usize,
    pub alerts_pending: u64,
    pub alerts_abandoned: u64,
}

/// A label value, escaped as the exposition format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", label(v)))
                .collect();
            let _ = write!(self.out, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// The `/metrics` page.
pub fn render(metrics: &Metrics, snapshot: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let mut f = Family { out: &mut out };
    let active: Vec<&HostView> = snapshot
        .hosts
        .iter()
        .filter(|h| h.record.status == HostStatus::Active)
        .collect();

    f.header(
        "driftwatch_host_drift_ratio",
        "gauge",
        "Fraction (0 to 1) of the host's observed items that deviate from its image.",
    );
    for h in &active {
        let r = &h.record;
        f.sample(
            "driftwatch_host_drift_ratio",
            &[
                ("host_id", &r.host_id),
                ("image_id", &r.image_id),
                ("image_version", &r.image_version),
            ],
            r.drift_pct / 100.0,
        );
    }
    f.header(
        "driftwatch_host_deviations",
        "gauge",
        "Current deviations from the image on the host.",
    );
    for h in &active {
        f.sample(
            "driftwatch_host_deviations",
            &[("host_id", &h.record.host_id)],
            h.record.deviation_count as f64,
        );
    }
    f.header(
        "driftwatch_host_instance_start_time_seconds",
        "gauge",
        "When the instance first came up (earliest boot time reported, or first contact), Unix seconds.",
    );
    for h in &active {
        let start = time_now() - h.assessment.instance_age_secs;
        f.sample(
            "driftwatch_host_instance_start_time_seconds",
            &[("host_id", &h.record.host_id)],
            start as f64,
        );
    }
    f.header(
        "driftwatch_host_image_build_time_seconds",
        "gauge",
        "When the host's image was built, Unix seconds (absent when unknown).",
    );
    for h in &active {
        if h.assessment.image_age_secs >= 0 {
            let r = &h.record;
            f.sample(
                "driftwatch_host_image_build_time_seconds",
                &[
                    ("host_id", &r.host_id),
                    ("image_id", &r.image_id),
                    ("image_version", &r.image_version),
                ],
                (time_now() - h.assessment.image_age_secs) as f64,
            );
        }
    }
    f.header(
        "driftwatch_host_last_seen_timestamp_seconds",
        "gauge",
        "When the host's agent last reported or sent a heartbeat, Unix seconds.",
    );
    for h in &active {
        f.sample(
            "driftwatch_host_last_seen_timestamp_seconds",
            &[("host_id", &h.record.host_id)],
            h.record.last_seen as f64,
        );
    }
    f.header(
        "driftwatch_host_flagged",
        "gauge",
        "1 if the host is flagged for replacement, else 0.",
    );
    for h in &active {
        f.sample(
            "driftwatch_host_flagged",
            &[("host_id", &h.record.host_id)],
            if h.assessment.flagged() { 1.0 } else { 0.0 },
        );
    }
    f.header(
        "driftwatch_host_draining",
        "gauge",
        "1 if a scheduler has taken the host for replacement, else 0.",
    );
    for h in &active {
        f.sample(
            "driftwatch_host_draining",
            &[("host_id", &h.record.host_id)],
            if h.record.queue_state == QueueState::Draining {
                1.0
            } else {
                0.0
            },
        );
    }
    f.header(
        "driftwatch_hosts",
        "gauge",
        "Hosts known to the collector, by status.",
    );
    let retired = snapshot.hosts.len() - active.len();
    f.sample(
        "driftwatch_hosts",
        &[("status", "active")],
        active.len() as f64,
    );
    f.sample("driftwatch_hosts", &[("status", "retired")], retired as f64);
    f.header(
        "driftwatch_agents_connected",
        "gauge",
        "Agent sessions open now.",
    );
    f.sample(
        "driftwatch_agents_connected",
        &[],
        snapshot.connected_agents as f64,
    );
    let counter = |f: &mut Family<'_>, name: &str, help: &str, value: &AtomicU64| {
        f.header(name, "counter", help);
        f.sample(name, &[], value.load(Ordering::Relaxed) as f64);
    };
    counter(
        &mut f,
        "driftwatch_ingest_reports_total",
        "Agent reports durably stored and acknowledged.",
        &metrics.reports_ingested,
    );
    counter(
        &mut f,
        "driftwatch_ingest_deviation_changes_total",
        "Deviation changes (new, changed, resolved) in stored reports.",
        &metrics.changes_ingested,
    );
    counter(
        &mut f,
        "driftwatch_ingest_rejected_reports_total",
        "Agent messages refused as invalid.",
        &metrics.reports_rejected,
    );
    counter(
        &mut f,
        "driftwatch_agent_sessions_opened_total",
        "Agent sessions opened.",
        &metrics.sessions_opened,
    );
    let alerts = metrics.alerts.lock().unwrap().clone();
    f.header(
        "driftwatch_alerts_sent_total",
        "counter",
        "Alerts delivered, by sink.",
    );
    for (sink, (sent, _)) in &alerts {
        f.sample(
            "driftwatch_alerts_sent_total",
            &[("sink", sink)],
            *sent as f64,
        );
    }
    f.header(
        "driftwatch_alerts_failed_total",
        "counter",
        "Failed alert delivery attempts, by sink.",
    );
    for (sink, (_, failed)) in &alerts {
        f.sample(
            "driftwatch_alerts_failed_total",
            &[("sink", sink)],
            *failed as f64,
        );
    }
    f.header(
        "driftwatch_alerts_pending",
        "gauge",
        "Alerts in the outbox not yet delivered.",
    );
    f.sample(
        "driftwatch_alerts_pending",
        &[],
        snapshot.alerts_pending as f64,
    );
    f.header(
        "driftwatch_alerts_abandoned",
        "gauge",
        "Alerts given up on (permanent failure or too many attempts).",
    );
    f.sample(
        "driftwatch_alerts_abandoned",
        &[],
        snapshot.alerts_abandoned as f64,
    );
    out
}

fn time_now() -> i64 {
    crate::time::now()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_every_family_is_declared() {
        let metrics = Metrics::default();
        metrics.count_report(5);
        metrics.alert_sink("hook");
        metrics.alert_sent("hook");
        let text = render(
            &metrics,
            &Snapshot {
                hosts: &[],
                connected_agents: 3,
                alerts_pending: 1,
                alerts_abandoned: 0,
            },
        );
        assert!(text.contains("driftwatch_ingest_deviation_changes_total 5\n"));
        assert!(text.contains("driftwatch_alerts_sent_total{sink=\"hook\"} 1\n"));
        assert!(text.contains("driftwatch_agents_connected 3\n"));
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE"
            );
        }
    }
}
