//! The replacement queue schedulers work from: flagged hosts by priority,
//! the ones already draining, and which are held back by the disruption
//! budget.
//!
//! States: *flagged* (has a reason, nobody has taken it), *draining* (a
//! scheduler took it and is replacing it), *retired* (replaced; out of the
//! queue). A retired host that reports again is flagged again (`returned`).
//!
//! The budget keeps a new image or a fleet-wide finding from taking the
//! whole fleet down at once: at most `max_draining` hosts fleet-wide, and at
//! most `max_draining_pct` percent of an image family's active hosts (at
//! least one), draining at the same time. The queue is walked in priority
//! order handing out what the budget has left, so it says exactly which
//! hosts a scheduler could take now and which wait, and why.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex;

use crate::config::QueueBudget;
use crate::ingest::{IngestError, Writer};
use crate::query::{HostView, Queries};
use crate::store::{HostStatus, QueueState, StoreError, Write, Written};
use crate::time;

/// One host in the queue.
#[derive(Debug, Clone)]
pub struct Entry {
    pub view: HostView,
    pub draining: bool,
    /// Higher is more urgent.
    pub priority: i64,
    /// Why the budget holds it back, if it does.
    pub held_back: Option<String>,
}

/// The queue with its budget.
#[derive(Debug, Clone)]
pub struct Queue {
    pub budget: QueueBudget,
    pub draining_now: u64,
    /// Draining hosts first, then flagged ones, each by priority.
    pub entries: Vec<Entry>,
}

/// Urgency: a sticky reason (a critical change, a returned host) outranks
/// everything, then more reasons, then more drift.
pub fn priority(view: &HostView) -> i64 {
    let a = &view.assessment;
    let sticky = if a.reasons.iter().any(|r| r.sticky) {
        1000
    } else {
        0
    };
    sticky + 100 * a.reasons.len() as i64 + view.record.drift_pct.clamp(0.0, 99.0) as i64
}

/// The queue state shown for a host.
pub fn state(view: &HostView) -> &'static str {
    if view.record.status == HostStatus::Retired {
        "retired"
    } else if view.record.queue_state == QueueState::Draining {
        "draining"
    } else if view.assessment.flagged() {
        "flagged"
    } else {
        "none"
    }
}

/// Builds the queue from every host.
pub fn build(hosts: Vec<HostView>, budget: QueueBudget) -> Queue {
    let active: Vec<HostView> = hosts
        .into_iter()
        .filter(|h| h.record.status == HostStatus::Active)
        .collect();
    let mut family_size: HashMap<String, u64> = HashMap::new();
    let mut family_draining: HashMap<String, u64> = HashMap::new();
    for h in &active {
        *family_size.entry(h.record.image_id.clone()).or_default() += 1;
        if h.record.queue_state == QueueState::Draining {
            *family_draining
                .entry(h.record.image_id.clone())
                .or_default() += 1;
        }
    }
    let draining_now = family_draining.values().sum();
    let mut entries: Vec<Entry> = active
        .into_iter()
        .filter(|h| h.record.queue_state == QueueState::Draining || h.assessment.flagged())
        .map(|view| Entry {
            priority: priority(&view),
            draining: view.record.queue_state == QueueState::Draining,
            held_back: None,
            view,
        })
        .collect();
    entries.sort_by(|a, b| {
        b.draining
            .cmp(&a.draining)
            .then(b.priority.cmp(&a.priority))
            .then(a.view.record.host_id.cmp(&b.view.record.host_id))
    });
    // Hand out what the budget has left, most urgent first.
    let mut fleet_used = draining_now;
    let mut family_used = family_draining;
    for entry in entries.iter_mut().filter(|e| !e.draining) {
        let family = entry.view.record.image_id.clone();
        if let Some(max) = budget.max_draining
            && fleet_used >= max
        {
            entry.held_back = Some(format!(
                "fleet budget: {fleet_used} of at most {max} hosts draining or ahead in the queue"
            ));
            continue;
        }
        if let Some(pct) = budget.max_draining_pct {
            let size = family_size.get(&family).copied().unwrap_or(0);
            let allowed = ((size as f64 * pct / 100.0).floor() as u64).max(1);
            let used = family_used.get(&family).copied().unwrap_or(0);
            if used >= allowed {
                entry.held_back = Some(format!(
                    "image {} budget: {used} of at most {allowed} hosts ({pct}% of {size}) \
                     draining or ahead in the queue",
                    if family.is_empty() { "-" } else { &family }
                ));
                continue;
            }
        }
        fleet_used += 1;
        *family_used.entry(family).or_default() += 1;
    }
    Queue {
        budget,
        draining_now,
        entries,
    }
}

/// Why a queue operation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("no host {0}")]
    NotFound(String),
    #[error("host {host_id} is not flagged for replacement")]
    NotFlagged { host_id: String },
    #[error("host {host_id} is held back: {reason}")]
    HeldBack { host_id: String, reason: String },
    #[error("host {host_id} is not draining")]
    NotDraining { host_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
}

/// Queue operations, serialized so two schedulers taking hosts at the same
/// moment cannot both spend the last unit of budget.
#[derive(Debug)]
pub struct Scheduler {
    queries: Arc<Queries>,
    writer: Writer,
    budget: QueueBudget,
    lock: Mutex<()>,
}

impl Scheduler {
    pub fn new(queries: Arc<Queries>, writer: Writer, budget: QueueBudget) -> Arc<Scheduler> {
        Arc::new(Scheduler {
            queries,
            writer,
            budget,
            lock: Mutex::new(()),
        })
    }

    pub async fn queue(&self) -> Result<Queue, StoreError> {
        Ok(build(self.queries.hosts().await?, self.budget))
    }

    /// Takes the most urgent host the budget allows: it becomes draining.
    /// `None` when there is nothing to take (the queue says why).
    pub async fn take_next(&self, by: &str) -> Result<(Option<HostView>, Queue), QueueError> {
        let _serial = self.lock.lock().await;
        let queue = self.queue().await?;
        let Some(next) = queue
            .entries
            .iter()
            .find(|e| !e.draining && e.held_back.is_none())
        else {
            return Ok((None, queue));
        };
        let host_id = next.view.record.host_id.clone();
        self.set(&host_id, QueueState::Draining, by).await?;
        Ok((self.queries.host(host_id).await?, queue))
    }

    /// Takes a given host, if it is flagged and the budget allows.
    pub async fn drain(&self, host_id: &str, by: &str) -> Result<HostView, QueueError> {
        let _serial = self.lock.lock().await;
        let queue = self.queue().await?;
        match queue
            .entries
            .iter()
            .find(|e| e.view.record.host_id == host_id)
        {
            None => {
                return Err(match self.queries.host(host_id.to_string()).await? {
                    Some(_) => QueueError::NotFlagged {
                        host_id: host_id.into(),
                    },
                    None => QueueError::NotFound(host_id.into()),
                });
            }
            Some(e) if e.draining => {}
            Some(e) => {
                if let Some(reason) = &e.held_back {
                    return Err(QueueError::HeldBack {
                        host_id: host_id.into(),
                        reason: reason.clone(),
                    });
                }
                self.set(host_id, QueueState::Draining, by).await?;
            }
        }
        self.view(host_id).await
    }

    /// Gives a draining host back to the queue (the scheduler gave up).
    pub async fn release(&self, host_id: &str) -> Result<HostView, QueueError> {
        let _serial = self.lock.lock().await;
        let view = self.view(host_id).await?;
        if view.record.queue_state != QueueState::Draining {
            return Err(QueueError::NotDraining {
                host_id: host_id.into(),
            });
        }
        self.set(host_id, QueueState::None, "").await?;
        self.view(host_id).await
    }

    async fn set(&self, host_id: &str, state: QueueState, by: &str) -> Result<(), QueueError> {
        let write = Write::SetQueueState {
            host_id: host_id.into(),
            state,
            by: by.into(),
            at: time::now(),
        };
        match self.writer.write(write).await? {
            Written::Host { found: true } => {
                tracing::info!(%host_id, state = state.as_str(), %by, "queue state changed");
                Ok(())
            }
            _ => Err(QueueError::NotFound(host_id.into())),
        }
    }

    async fn view(&self, host_id: &str) -> Result<HostView, QueueError> {
        self.queries
            .host(host_id.to_string())
            .await?
            .ok_or_else(|| QueueError::NotFound(host_id.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Assessment, Reason};
    use crate::store::HostRecord;

    fn view(id: &str, image: &str, reasons: usize, draining: bool) -> HostView {
        HostView {
            record: HostRecord {
                host_id: id.into(),
                hostname: id.into(),
                image_id: image.into(),
                image_version: "1".into(),
                manifest_digest: vec![0; 32],
                image_build_time: 0,
                agent_version: String::new(),
                first_seen: 0,
                last_seen: 0,
                boot_time: 0,
                first_boot_time: 0,
                status: HostStatus::Active,
                last_seq: 0,
                dropped_reports: 0,
                drift_pct: 0.0,
                deviating: 0,
                observed: 0,
                not_verified: 0,
                last_scan: 0,
                deviation_count: 0,
                sticky: vec![],
                acked_codes: vec![],
                acked_at: 0,
                queue_state: if draining {
                    QueueState::Draining
                } else {
                    QueueState::None
                },
                drain_since: 0,
                drained_by: String::new(),
            },
            assessment: Assessment {
                reasons: (0..reasons)
                    .map(|i| Reason {
                        code: format!("r{i}"),
                        message: String::new(),
                        sticky: false,
                        since: 0,
                    })
                    .collect(),
                instance_age_secs: 0,
                image_age_secs: 0,
                acknowledged: false,
            },
            connected: true,
        }
    }

    fn held(q: &Queue) -> Vec<(&str, bool)> {
        q.entries
            .iter()
            .map(|e| (e.view.record.host_id.as_str(), e.held_back.is_some()))
            .collect()
    }

    #[test]
    fn fleet_budget_holds_back_the_least_urgent() {
        let hosts = vec![
            view("a", "web", 1, true),
            view("b", "web", 3, false),
            view("c", "web", 2, false),
            view("ok", "web", 0, false),
        ];
        let q = build(
            hosts,
            QueueBudget {
                max_draining: Some(2),
                max_draining_pct: None,
            },
        );
        assert_eq!(q.draining_now, 1);
        assert_eq!(held(&q), [("a", false), ("b", false), ("c", true)]);
        assert!(
            q.entries[2]
                .held_back
                .as_ref()
                .unwrap()
                .contains("fleet budget: 2 of at most 2")
        );
    }

    #[test]
    fn family_percentage_allows_at_least_one_per_family() {
        let mut hosts: Vec<HostView> = (0..10)
            .map(|i| view(&format!("web{i}"), "web", 1, false))
            .collect();
        hosts.push(view("db0", "db", 1, false));
        hosts.push(view("db1", "db", 1, false));
        let q = build(
            hosts,
            QueueBudget {
                max_draining: None,
                max_draining_pct: Some(20.0),
            },
        );
        let free: Vec<&str> = q
            .entries
            .iter()
            .filter(|e| e.held_back.is_none())
            .map(|e| e.view.record.host_id.as_str())
            .collect();
        assert_eq!(
            free,
            ["db0", "web0", "web1"],
            "20% of 10 webs, at least 1 of 2 dbs"
        );
        let held_db = q
            .entries
            .iter()
            .find(|e| e.view.record.host_id == "db1")
            .unwrap();
        assert!(
            held_db
                .held_back
                .as_ref()
                .unwrap()
                .contains("image db budget: 1 of at most 1")
        );
    }
}
