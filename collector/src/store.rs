//! Storage: the one interface the server, the policy and the queries use.
//!
//! All mutations go through [`Store::write`], which applies a batch of
//! [`Write`]s in one durable transaction: the ingest writer groups reports
//! from many agents into one commit and acknowledges them only after it
//! returns. Reads are plain queries on their own connection. A backend
//! ([`Backend`]) hands out connections; SQLite is the embedded default and
//! another database only has to implement these two traits.

pub mod sqlite;

/// Why the store failed. Any error aborts the whole batch: nothing in it
/// was applied, so nothing in it may be acknowledged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(String),
    #[error("cannot open the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "the database schema is version {found}, newer than this collector knows ({known}); \
         upgrade the collector"
    )]
    NewerSchema { found: i64, known: i64 },
}

/// Opens connections to one database.
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn open(&self) -> Result<Box<dyn Store>, StoreError>;
    /// For logs: where the data lives.
    fn describe(&self) -> String;
}

/// One connection.
pub trait Store: Send + std::fmt::Debug {
    /// Applies `batch` atomically and durably, returning one result per
    /// write, in order.
    fn write(&mut self, batch: &[Write]) -> Result<Vec<Written>, StoreError>;
    fn hosts(&mut self) -> Result<Vec<HostRecord>, StoreError>;
    fn host(&mut self, host_id: &str) -> Result<Option<HostRecord>, StoreError>;
    /// The host's current deviations, critical ones first, at most `limit`.
    fn deviations(
        &mut self,
        host_id: &str,
        limit: usize,
    ) -> Result<Vec<DeviationRecord>, StoreError>;
    /// The newest `limit` drift points, oldest first.
    fn history(&mut self, host_id: &str, limit: usize) -> Result<Vec<DriftPoint>, StoreError>;
    /// Registered images, each with how many non-retired hosts run it.
    fn images(&mut self) -> Result<Vec<(ImageRecord, u64)>, StoreError>;
    /// The same deviation (kind, subject and actual value) on at least
    /// `min_hosts` active hosts, most widespread first.
    fn findings(&mut self, min_hosts: u64, limit: usize) -> Result<Vec<FindingRecord>, StoreError>;
    /// Alerts due for delivery at `now`, oldest first.
    fn due_alerts(&mut self, now: i64, limit: usize) -> Result<Vec<OutboxRecord>, StoreError>;
    /// Alerts not yet delivered, and alerts given up on.
    fn alert_backlog(&mut self) -> Result<(u64, u64), StoreError>;
}

/// A mutation.
#[derive(Debug, Clone)]
pub enum Write {
    /// An agent said hello; answered with the last applied sequence.
    Session(SessionOpen),
    /// One agent report; applied at most once per (host, seq).
    Report(ReportWrite),
    Heartbeat {
        host_id: String,
        at: i64,
    },
    RegisterImage(ImageRecord),
    /// A person has seen these reason codes on the host.
    Acknowledge {
        host_id: String,
        codes: Vec<String>,
        at: i64,
    },
    /// The host was replaced: its flags clear, sticky ones included.
    Retire {
        host_id: String,
        at: i64,
    },
    /// A scheduler took the host (draining) or gave it back.
    SetQueueState {
        host_id: String,
        state: QueueState,
        by: String,
        at: i64,
    },
    /// What happened to one outbox alert.
    AlertOutcome {
        id: i64,
        outcome: AlertOutcome,
    },
}

/// The result of one delivery attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertOutcome {
    Delivered {
        at: i64,
    },
    Retry {
        next_attempt: i64,
        error: String,
    },
    /// Permanent failure or too many attempts: kept, never retried.
    Dead {
        at: i64,
        error: String,
    },
}

/// Where a host stands in the replacement queue beyond being flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueState {
    None,
    /// A scheduler has taken it and is replacing it.
    Draining,
}

impl QueueState {
    pub fn as_str(self) -> &'static str {
        match self {
            QueueState::None => "none",
            QueueState::Draining => "draining",
        }
    }
}

/// The result of one [`Write`].
#[derive(Debug, Clone, PartialEq)]
pub enum Written {
    Session {
        last_applied_seq: u64,
    },
    /// `applied` is false for a replay of a report already applied, or a
    /// report from a host that never said hello.
    Report {
        applied: bool,
    },
    Heartbeat,
    Image(ImageRecord),
    /// Whether the host exists.
    Host {
        found: bool,
    },
    Done,
}

#[derive(Debug, Clone)]
pub struct SessionOpen {
    pub host_id: String,
    pub hostname: String,
    pub image_id: String,
    pub image_version: String,
    pub manifest_digest: Vec<u8>,
    pub boot_time: i64,
    pub image_build_time: i64,
    pub agent_version: String,
    pub state_epoch: u64,
    pub at: i64,
}

#[derive(Debug, Clone)]
pub struct ReportWrite {
    pub host_id: String,
    pub seq: u64,
    pub scan_id: u64,
    pub dropped_reports: u64,
    pub changes: Vec<ChangeWrite>,
    pub scan_end: Option<ScanEndWrite>,
    pub at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    Changed,
    Resolved,
}

#[derive(Debug, Clone)]
pub struct ChangeWrite {
    pub change: Change,
    /// Identity of the deviation on its host: kind and subject.
    pub key: Vec<u8>,
    pub kind: String,
    /// The encoded `driftwatch.v1.Deviation`, kept whole so nothing the
    /// agent said is lost.
    pub body: Vec<u8>,
    /// Why this change flags the host at once, if it does.
    pub critical: Option<String>,
    /// high, medium or low, from the alert rules.
    pub severity: &'static str,
    /// Kind, subject and actual value: equal on every host that has the
    /// same deviation, which is what groups fleet-wide findings.
    pub fingerprint: Vec<u8>,
    /// The alert to queue, once per sink, if this deviation is new on the
    /// host (not merely re-sent by a snapshot).
    pub alert: Option<AlertWrite>,
}

#[derive(Debug, Clone)]
pub struct AlertWrite {
    /// Stable for this deviation event; receivers deduplicate on it.
    pub id: String,
    /// The sinks that take an alert of this severity.
    pub sinks: std::sync::Arc<[String]>,
    /// The JSON body sinks deliver.
    pub body: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct ScanEndWrite {
    pub finished_at: i64,
    pub drift_pct: f64,
    pub deviating: u64,
    pub observed: u64,
    pub not_verified: u64,
    pub snapshot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostStatus {
    Active,
    Retired,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Active => "active",
            HostStatus::Retired => "retired",
        }
    }
}

/// A flag that stays until the host is retired.
#[derive(Debug, Clone, PartialEq)]
pub struct StickyFlag {
    pub code: String,
    /// The first occurrence.
    pub message: String,
    pub since: i64,
    /// How many times it was raised.
    pub count: u64,
}

/// Everything stored about a host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostRecord {
    pub host_id: String,
    pub hostname: String,
    pub image_id: String,
    pub image_version: String,
    pub manifest_digest: Vec<u8>,
    /// 0 when unknown.
    pub image_build_time: i64,
    pub agent_version: String,
    pub first_seen: i64,
    pub last_seen: i64,
    pub boot_time: i64,
    /// The earliest boot time ever reported: instance age counts from here.
    pub first_boot_time: i64,
    pub status: HostStatus,
    pub last_seq: u64,
    pub dropped_reports: u64,
    pub drift_pct: f64,
    pub deviating: u64,
    pub observed: u64,
    pub not_verified: u64,
    /// 0 before the first complete scan.
    pub last_scan: i64,
    pub deviation_count: u64,
    pub sticky: Vec<StickyFlag>,
    pub acked_codes: Vec<String>,
    pub acked_at: i64,
    pub queue_state: QueueState,
    /// When the scheduler took it, and who (0 and empty when not draining).
    pub drain_since: i64,
    pub drained_by: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviationRecord {
    pub kind: String,
    pub body: Vec<u8>,
    pub critical: bool,
    pub severity: String,
    pub first_seen: i64,
    pub last_changed: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DriftPoint {
    pub at: i64,
    pub drift_pct: f64,
    pub deviating: u64,
    pub observed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    pub manifest_digest: Vec<u8>,
    pub image_id: String,
    pub image_version: String,
    pub source_commit: String,
    pub build_time: i64,
    pub entries: u64,
    pub files: u64,
    pub packages: u64,
    pub registered_at: i64,
}

/// One deviation seen on several hosts.
#[derive(Debug, Clone, PartialEq)]
pub struct FindingRecord {
    pub kind: String,
    /// One host's encoded deviation (they are equal in kind, subject and
    /// actual value).
    pub body: Vec<u8>,
    pub severity: String,
    pub host_count: u64,
    /// Up to 100 of them.
    pub host_ids: Vec<String>,
    pub first_seen: i64,
}

/// An alert waiting in the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRecord {
    pub id: i64,
    pub sink: String,
    pub alert_id: String,
    pub body: Vec<u8>,
    pub attempts: u32,
}
