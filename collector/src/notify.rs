//! Alerting on the ingest path and the outbox dispatcher.
//!
//! Ingest asks the [`Notifier`] for each deviation's severity (the alert
//! rules) and, when sinks are configured, for the alert body; the store
//! writes one outbox row per accepting sink in the same transaction as the
//! deviation, and only when the deviation is new on the host: one alert per
//! new deviation, not one per scan. [`dispatch`] then drains due rows
//! through the sinks and records each outcome (delivered, retry with
//! backoff, or given up) through the writer, so a collector restart
//! resumes exactly where delivery stood.

use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::pb::v1 as pb;
use tokio::sync::watch;

use crate::alerts::{self, HostFields, Severity, ValidatedAlerts, backoff};
use crate::ingest::Writer;
use crate::metrics::Metrics;
use crate::query::Queries;
use crate::store::{AlertOutcome, OutboxRecord, SessionOpen, Write};
use crate::time;

/// Severity rules and sinks, as ingest needs them.
#[derive(Debug)]
pub struct Notifier {
    alerts: Arc<ValidatedAlerts>,
    /// Sink names accepting each severity (low, medium, high).
    accepting: [Arc<[String]>; 3],
    collector: String,
}

impl Default for Notifier {
    fn default() -> Notifier {
        Notifier::new(Arc::new(
            alerts::AlertsConfig::default()
                .validate()
                .expect("the default alert config is valid"),
        ))
    }
}

fn index(severity: Severity) -> usize {
    match severity {
        Severity::Low => 0,
        Severity::Medium => 1,
        Severity::High => 2,
    }
}

impl Notifier {
    pub fn new(alerts: Arc<ValidatedAlerts>) -> Notifier {
        let accepting = [Severity::Low, Severity::Medium, Severity::High].map(|severity| {
            alerts
                .sinks
                .iter()
                .filter(|s| s.accepts(severity))
                .map(|s| s.name().to_string())
                .collect::<Vec<_>>()
                .into()
        });
        Notifier {
            alerts,
            accepting,
            collector: alerts::local_hostname(),
        }
    }

    pub fn severity(&self, deviation: &pb::Deviation) -> Severity {
        self.alerts.rules.classify(deviation)
    }

    /// The sinks an alert of `severity` goes to (empty: no alert).
    pub fn sinks_for(&self, severity: Severity) -> Arc<[String]> {
        self.accepting[index(severity)].clone()
    }

    pub fn alert_body(
        &self,
        host: &SessionOpen,
        deviation: &pb::Deviation,
        severity: Severity,
        id: &str,
        first_seen: i64,
    ) -> Vec<u8> {
        let fields = HostFields {
            host_id: &host.host_id,
            hostname: &host.hostname,
            image_id: &host.image_id,
            image_version: &host.image_version,
        };
        alerts::alert_body(
            id,
            &fields,
            deviation,
            severity,
            first_seen,
            &self.collector,
        )
    }

    pub fn sink_names(&self) -> Vec<String> {
        self.alerts
            .sinks
            .iter()
            .map(|s| s.name().to_string())
            .collect()
    }
}

/// How many due alerts one round takes.
const ROUND: usize = 256;
/// How often the outbox is polled when it has nothing due.
const IDLE_POLL: Duration = Duration::from_millis(500);

/// Delivers due outbox alerts until `stop` turns true.
pub async fn dispatch(
    notifier: Arc<Notifier>,
    queries: Arc<Queries>,
    writer: Writer,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    if notifier.alerts.sinks.is_empty() {
        return;
    }
    for name in notifier.sink_names() {
        metrics.alert_sink(&name);
    }
    loop {
        if *stop.borrow() {
            return;
        }
        let due = match queries.due_alerts(ROUND).await {
            Ok(due) => due,
            Err(e) => {
                tracing::error!("cannot read the alert outbox: {e}");
                Vec::new()
            }
        };
        if due.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(IDLE_POLL) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        // Sinks deliver concurrently; one slow receiver does not hold up
        // the others' alerts beyond this round.
        let mut round = tokio::task::JoinSet::new();
        for alert in due {
            let notifier = notifier.clone();
            round.spawn(async move {
                let outcome = deliver(&notifier, &alert).await;
                (alert, outcome)
            });
        }
        while let Some(done) = round.join_next().await {
            let Ok((alert, outcome)) = done else { continue };
            match &outcome {
                AlertOutcome::Delivered { .. } => metrics.alert_sent(&alert.sink),
                AlertOutcome::Retry { error, .. } | AlertOutcome::Dead { error, .. } => {
                    metrics.alert_failed(&alert.sink);
                    tracing::warn!(
                        sink = %alert.sink,
                        alert_id = %alert.alert_id,
                        attempts = alert.attempts + 1,
                        gave_up = matches!(outcome, AlertOutcome::Dead { .. }),
                        "alert delivery failed: {error}"
                    );
                }
            }
            let write = Write::AlertOutcome {
                id: alert.id,
                outcome,
            };
            if let Err(e) = writer.write(write).await {
                tracing::error!("cannot record an alert outcome: {e}");
            }
        }
    }
}

async fn deliver(notifier: &Notifier, alert: &OutboxRecord) -> AlertOutcome {
    let now = time::now();
    let Some(sink) = notifier.alerts.sink(&alert.sink) else {
        return AlertOutcome::Dead {
            at: now,
            error: format!("sink {:?} is no longer configured", alert.sink),
        };
    };
    match sink.deliver(&alert.body, &alert.alert_id).await {
        Ok(()) => AlertOutcome::Delivered { at: time::now() },
        Err(e) if e.is_permanent() || backoff::exhausted(alert.attempts + 1) => {
            AlertOutcome::Dead {
                at: time::now(),
                error: e.message().to_string(),
            }
        }
        Err(e) => AlertOutcome::Retry {
            next_attempt: time::now()
                + backoff::retry_delay(alert.attempts).as_secs().max(1) as i64,
            error: e.message().to_string(),
        },
    }
}
