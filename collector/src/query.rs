//! The fleet's read side, shared by every surface (the gRPC fleet service
//! today): hosts with their replacement assessment, one host's report, the
//! replacement queue, images. Queries run on a small pool of read
//! connections on blocking threads, so they never wait for ingest commits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::ReplacementPolicy;
use crate::policy::{self, Assessment, KnownImages};
use crate::store::{
    Backend, DeviationRecord, DriftPoint, FindingRecord, HostRecord, ImageRecord, Store, StoreError,
};
use crate::time;

/// How many drift points a host report carries.
pub const HISTORY_POINTS: usize = 500;
/// How many deviations a host report carries unless asked for fewer.
pub const MAX_DEVIATIONS: usize = 10_000;

/// Which hosts have an agent session open right now.
#[derive(Debug, Default)]
pub struct Connections {
    open: Mutex<HashMap<String, u32>>,
}

/// Marks a host connected while it lives.
#[derive(Debug)]
pub struct Connected {
    connections: Arc<Connections>,
    host_id: String,
}

impl Connections {
    pub fn connect(self: &Arc<Self>, host_id: &str) -> Connected {
        *self
            .open
            .lock()
            .unwrap()
            .entry(host_id.to_string())
            .or_default() += 1;
        Connected {
            connections: self.clone(),
            host_id: host_id.to_string(),
        }
    }

    pub fn is_connected(&self, host_id: &str) -> bool {
        self.open.lock().unwrap().contains_key(host_id)
    }

    /// Open sessions.
    pub fn count(&self) -> usize {
        self.open
            .lock()
            .unwrap()
            .values()
            .map(|n| *n as usize)
            .sum()
    }
}

impl Drop for Connected {
    fn drop(&mut self) {
        let mut open = self.connections.open.lock().unwrap();
        if let Some(n) = open.get_mut(&self.host_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.host_id);
            }
        }
    }
}

/// A host with what the policy says about it now.
#[derive(Debug, Clone)]
pub struct HostView {
    pub record: HostRecord,
    pub assessment: Assessment,
    pub connected: bool,
}

/// A registered image as the fleet sees it.
#[derive(Debug, Clone)]
pub struct ImageView {
    pub record: ImageRecord,
    /// Active hosts running it.
    pub hosts: u64,
    /// The newer image of the same family, if one is registered.
    pub superseded_by: Option<ImageRecord>,
}

/// At most this many fleet-wide findings are listed.
pub const MAX_FINDINGS: usize = 500;
/// How long a findings answer is reused.
pub const FINDINGS_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// One host in full.
#[derive(Debug, Clone)]
pub struct HostReport {
    pub view: HostView,
    pub deviations: Vec<DeviationRecord>,
    pub history: Vec<DriftPoint>,
}

/// Read connections and the policy to judge hosts by.
#[derive(Debug)]
pub struct Queries {
    backend: Arc<dyn Backend>,
    idle: Mutex<Vec<Box<dyn Store>>>,
    policy: ReplacementPolicy,
    connections: Arc<Connections>,
    findings_cache: Mutex<Option<FindingsAnswer>>,
}

/// When, for which minimum, and what.
type FindingsAnswer = (std::time::Instant, u64, Vec<FindingRecord>);

impl Queries {
    pub fn new(
        backend: Arc<dyn Backend>,
        policy: ReplacementPolicy,
        connections: Arc<Connections>,
    ) -> Arc<Queries> {
        Arc::new(Queries {
            backend,
            idle: Mutex::new(Vec::new()),
            policy,
            connections,
            findings_cache: Mutex::new(None),
        })
    }

    /// Runs `f` on a pooled read connection on a blocking thread.
    async fn with<R, F>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        R: Send + 'static,
        F: FnOnce(&Queries, &mut dyn Store) -> Result<R, StoreError> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = this.idle.lock().unwrap().pop();
            let mut store = match pooled {
                Some(store) => store,
                None => this.backend.open()?,
            };
            let result = f(&this, store.as_mut());
            // A connection that failed is not put back.
            if result.is_ok() {
                this.idle.lock().unwrap().push(store);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Database(format!("query task failed: {e}")))?
    }

    fn view(&self, record: HostRecord, now: i64, known: &KnownImages) -> HostView {
        HostView {
            assessment: policy::assess(&record, now, &self.policy, known),
            connected: self.connections.is_connected(&record.host_id),
            record,
        }
    }

    /// Every host, by id.
    pub async fn hosts(self: &Arc<Self>) -> Result<Vec<HostView>, StoreError> {
        self.with(|q, store| {
            let known = known_images(store)?;
            let now = time::now();
            Ok(store
                .hosts()?
                .into_iter()
                .map(|h| q.view(h, now, &known))
                .collect())
        })
        .await
    }

    /// Flagged hosts, most urgent first: sticky reasons, then the number of
    /// reasons, then drift.
    pub async fn replacements(self: &Arc<Self>) -> Result<Vec<HostView>, StoreError> {
        let mut hosts: Vec<HostView> = self
            .hosts()
            .await?
            .into_iter()
            .filter(|h| h.assessment.flagged())
            .collect();
        hosts.sort_by(|a, b| {
            b.assessment
                .urgency()
                .cmp(&a.assessment.urgency())
                .then(b.record.drift_pct.total_cmp(&a.record.drift_pct))
                .then(a.record.host_id.cmp(&b.record.host_id))
        });
        Ok(hosts)
    }

    pub async fn host(self: &Arc<Self>, host_id: String) -> Result<Option<HostView>, StoreError> {
        self.with(move |q, store| {
            let known = known_images(store)?;
            Ok(store
                .host(&host_id)?
                .map(|h| q.view(h, time::now(), &known)))
        })
        .await
    }

    /// One host with at most `max_deviations` deviations (critical first).
    pub async fn report(
        self: &Arc<Self>,
        host_id: String,
        max_deviations: usize,
    ) -> Result<Option<HostReport>, StoreError> {
        self.with(move |q, store| {
            let known = known_images(store)?;
            let Some(record) = store.host(&host_id)? else {
                return Ok(None);
            };
            Ok(Some(HostReport {
                view: q.view(record, time::now(), &known),
                deviations: store.deviations(&host_id, max_deviations)?,
                history: store.history(&host_id, HISTORY_POINTS)?,
            }))
        })
        .await
    }

    /// Registered images with their host counts and what supersedes them.
    pub async fn images(self: &Arc<Self>) -> Result<Vec<ImageView>, StoreError> {
        self.with(|_, store| {
            let images = store.images()?;
            let known = KnownImages::new(images.iter().map(|(i, _)| i));
            Ok(images
                .iter()
                .map(|(record, hosts)| ImageView {
                    superseded_by: known
                        .superseding(&record.image_id, &record.manifest_digest)
                        .cloned(),
                    record: record.clone(),
                    hosts: *hosts,
                })
                .collect())
        })
        .await
    }

    /// Alerts not yet delivered, and alerts given up on.
    pub async fn alert_backlog(self: &Arc<Self>) -> Result<(u64, u64), StoreError> {
        self.with(|_, store| store.alert_backlog()).await
    }

    /// Alerts due for delivery.
    pub async fn due_alerts(
        self: &Arc<Self>,
        limit: usize,
    ) -> Result<Vec<crate::store::OutboxRecord>, StoreError> {
        self.with(move |_, store| store.due_alerts(time::now(), limit))
            .await
    }

    /// Deviations shared by at least `min_hosts` active hosts. Computing
    /// them scans every deviation, so an answer is reused for
    /// [`FINDINGS_TTL`]: a dashboard refreshing every few seconds costs
    /// one scan per TTL, not one per refresh.
    pub async fn findings(
        self: &Arc<Self>,
        min_hosts: u64,
    ) -> Result<Vec<FindingRecord>, StoreError> {
        if let Some((at, min, cached)) = &*self.findings_cache.lock().unwrap()
            && *min == min_hosts
            && at.elapsed() < FINDINGS_TTL
        {
            return Ok(cached.clone());
        }
        let fresh = self
            .with(move |_, store| store.findings(min_hosts, MAX_FINDINGS))
            .await?;
        *self.findings_cache.lock().unwrap() =
            Some((std::time::Instant::now(), min_hosts, fresh.clone()));
        Ok(fresh)
    }
}

fn known_images(store: &mut dyn Store) -> Result<KnownImages, StoreError> {
    let images = store.images()?;
    Ok(KnownImages::new(images.iter().map(|(i, _)| i)))
}
