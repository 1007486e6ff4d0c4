//! The single writer: every mutation, from every agent session and fleet
//! client, goes through one thread that owns the store's write connection.
//!
//! Group commit: the writer takes whatever is queued (up to a bound) and
//! applies it in one transaction, so one fsync covers many agents' reports.
//! Each caller gets its own result only after that commit returned, which is
//! what lets a session acknowledge a report: it is on disk. If the commit
//! fails, every write in the batch gets the error and nothing is
//! acknowledged; the agents keep the reports in their spools and replay.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::store::{Store, StoreError, Write, Written};

/// How many writes may wait for the writer before callers are slowed down;
/// this backpressure reaches agents through HTTP/2 flow control.
const QUEUE: usize = 4096;
/// How many agent reports may be decoded and not yet committed, across all
/// sessions. This is what bounds the collector's memory under load: a
/// session takes a slot before it reads its next message, so with
/// thousands of agents sending at once the rest wait in their HTTP/2 flow
/// control windows, not in the collector's heap.
pub const REPORT_SLOTS: usize = 256;
/// At most this many changes in one transaction, so one commit never
/// holds the WAL for long.
const MAX_BATCH_CHANGES: usize = 50_000;

/// Why a write did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("storage failed: {0}")]
    Store(Arc<StoreError>),
    #[error("the collector is shutting down")]
    Closed,
    #[error("an earlier report of this session was not stored; reconnect and resend")]
    SessionFailed,
}

type Reply = oneshot::Sender<Result<Written, IngestError>>;

/// A queued write, its reply, the report slot it holds until its commit,
/// and the fate of the session that sent it.
struct Job {
    write: Write,
    reply: Reply,
    slot: Option<Slot>,
    session: Option<SessionFate>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").finish_non_exhaustive()
    }
}

/// Shared by one agent session's writes. Reports are pipelined, so report
/// N+1 may sit in a later batch than report N; if N's commit fails, N+1
/// must not be applied either, or the store would record N as a gap the
/// agent dropped and the agent, told N+1 is applied, would delete N from
/// its spool. Once set, the session's remaining writes are refused; the
/// agent reconnects and resends from the last report actually stored.
#[derive(Debug, Clone, Default)]
pub struct SessionFate(Arc<std::sync::atomic::AtomicBool>);

impl SessionFate {
    fn fail(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// A handle to the writer thread; cheap to clone.
#[derive(Debug, Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
    slots: Arc<Semaphore>,
}

/// Permission to have one report decoded and in flight; released when the
/// report's transaction has committed (or failed).
#[derive(Debug)]
pub struct Slot(#[allow(dead_code, reason = "held for its Drop")] OwnedSemaphorePermit);

/// A write that has been queued; await it for the committed result.
#[derive(Debug)]
pub struct Pending(oneshot::Receiver<Result<Written, IngestError>>);

impl Pending {
    pub async fn committed(self) -> Result<Written, IngestError> {
        self.0.await.unwrap_or(Err(IngestError::Closed))
    }
}

impl Writer {
    /// Starts the writer thread. It stops when every handle is dropped.
    pub fn start(store: Box<dyn Store>) -> (Writer, std::thread::JoinHandle<()>) {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("driftwatch-writer".into())
            .spawn(move || run(store, receiver))
            .expect("spawning the writer thread");
        let slots = Arc::new(Semaphore::new(REPORT_SLOTS));
        (Writer { queue, slots }, thread)
    }

    /// Waits for a report slot; take one before reading a report.
    pub async fn reserve(&self) -> Result<Slot, IngestError> {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .map(Slot)
            .map_err(|_| IngestError::Closed)
    }

    /// Queues a write; waits only if the queue is full.
    pub async fn submit(&self, write: Write) -> Result<Pending, IngestError> {
        self.submit_in(write, None, None).await
    }

    /// Queues a write holding `slot` until it is committed.
    pub async fn submit_in(
        &self,
        write: Write,
        slot: Option<Slot>,
        session: Option<&SessionFate>,
    ) -> Result<Pending, IngestError> {
        let (reply, receiver) = oneshot::channel();
        let job = Job {
            write,
            reply,
            slot,
            session: session.cloned(),
        };
        self.queue
            .send(job)
            .await
            .map_err(|_| IngestError::Closed)?;
        Ok(Pending(receiver))
    }

    /// Queues a write and waits until it is committed.
    pub async fn write(&self, write: Write) -> Result<Written, IngestError> {
        self.submit(write).await?.committed().await
    }
}

fn changes(write: &Write) -> usize {
    match write {
        Write::Report(r) => r.changes.len() + 1,
        _ => 1,
    }
}

/// The writes of one transaction, with what to answer and release.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    replies: Vec<Reply>,
    slots: Vec<Slot>,
    sessions: Vec<SessionFate>,
    changes: usize,
}

impl Batch {
    /// Adds a job, or refuses it at once if its session already failed.
    fn take(&mut self, job: Job) {
        if job.session.as_ref().is_some_and(SessionFate::failed) {
            let _ = job.reply.send(Err(IngestError::SessionFailed));
            return;
        }
        self.changes += changes(&job.write);
        self.writes.push(job.write);
        self.replies.push(job.reply);
        self.slots.extend(job.slot);
        self.sessions.extend(job.session);
    }
}

fn run(mut store: Box<dyn Store>, mut receiver: mpsc::Receiver<Job>) {
    while let Some(job) = receiver.blocking_recv() {
        let mut batch = Batch::default();
        batch.take(job);
        while batch.changes < MAX_BATCH_CHANGES {
            match receiver.try_recv() {
                Ok(job) => batch.take(job),
                Err(_) => break,
            }
        }
        if batch.writes.is_empty() {
            continue;
        }
        match store.write(&batch.writes) {
            Ok(results) => {
                for (reply, result) in batch.replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!("commit of {} writes failed: {e}", batch.writes.len());
                for session in &batch.sessions {
                    session.fail();
                }
                let e = Arc::new(e);
                for reply in batch.replies {
                    let _ = reply.send(Err(IngestError::Store(e.clone())));
                }
            }
        }
        // The slots go with the batch: released once the commit is over.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteBackend;
    use crate::store::{Backend, DeviationRecord, DriftPoint, FindingRecord, HostRecord};
    use crate::store::{ImageRecord, OutboxRecord, ReportWrite, SessionOpen};

    /// The real SQLite store, except that the batch holding a report with
    /// `fail_seq` fails to commit, as a full disk would make it.
    #[derive(Debug)]
    struct FailOnce {
        inner: Box<dyn Store>,
        fail_seq: u64,
    }

    impl Store for FailOnce {
        fn write(&mut self, batch: &[Write]) -> Result<Vec<Written>, StoreError> {
            let hit = batch
                .iter()
                .any(|w| matches!(w, Write::Report(r) if r.seq == self.fail_seq));
            if hit {
                self.fail_seq = 0;
                return Err(StoreError::Database("disk full".into()));
            }
            self.inner.write(batch)
        }
        fn hosts(&mut self) -> Result<Vec<HostRecord>, StoreError> {
            self.inner.hosts()
        }
        fn host(&mut self, id: &str) -> Result<Option<HostRecord>, StoreError> {
            self.inner.host(id)
        }
        fn deviations(&mut self, id: &str, n: usize) -> Result<Vec<DeviationRecord>, StoreError> {
            self.inner.deviations(id, n)
        }
        fn history(&mut self, id: &str, n: usize) -> Result<Vec<DriftPoint>, StoreError> {
            self.inner.history(id, n)
        }
        fn images(&mut self) -> Result<Vec<(ImageRecord, u64)>, StoreError> {
            self.inner.images()
        }
        fn findings(&mut self, m: u64, n: usize) -> Result<Vec<FindingRecord>, StoreError> {
            self.inner.findings(m, n)
        }
        fn due_alerts(&mut self, now: i64, n: usize) -> Result<Vec<OutboxRecord>, StoreError> {
            self.inner.due_alerts(now, n)
        }
        fn alert_backlog(&mut self) -> Result<(u64, u64), StoreError> {
            self.inner.alert_backlog()
        }
    }

    fn report(seq: u64) -> Write {
        Write::Report(ReportWrite {
            host_id: "h".into(),
            seq,
            scan_id: 1,
            dropped_reports: 0,
            changes: vec![],
            scan_end: None,
            at: 10,
        })
    }

    #[tokio::test]
    async fn after_a_failed_commit_the_sessions_later_reports_are_refused_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let backend = SqliteBackend::open(dir.path()).unwrap();
        let store = FailOnce {
            inner: backend.open().unwrap(),
            fail_seq: 2,
        };
        let (writer, _thread) = Writer::start(Box::new(store));
        let hello = Write::Session(SessionOpen {
            host_id: "h".into(),
            hostname: "h".into(),
            image_id: String::new(),
            image_version: String::new(),
            manifest_digest: vec![0; 32],
            boot_time: 0,
            image_build_time: 0,
            agent_version: String::new(),
            state_epoch: 1,
            at: 10,
        });
        writer.write(hello).await.unwrap();
        let fate = SessionFate::default();
        let submit = |seq, fate: SessionFate| {
            let writer = writer.clone();
            async move {
                writer
                    .submit_in(report(seq), None, Some(&fate))
                    .await
                    .unwrap()
                    .committed()
                    .await
            }
        };
        assert!(matches!(
            submit(1, fate.clone()).await,
            Ok(Written::Report { applied: true })
        ));
        assert!(matches!(
            submit(2, fate.clone()).await,
            Err(IngestError::Store(_))
        ));
        // Report 3 of the same stream would commit fine on its own, and be
        // taken for "2 was dropped": it is refused instead.
        assert!(matches!(
            submit(3, fate.clone()).await,
            Err(IngestError::SessionFailed)
        ));
        let host = backend.open().unwrap().host("h").unwrap().unwrap();
        assert_eq!(
            host.last_seq, 1,
            "nothing after the lost report was applied"
        );
        assert_eq!(host.dropped_reports, 0);
        // The agent's next session resends 2 and 3.
        let fresh = SessionFate::default();
        assert!(matches!(
            submit(2, fresh.clone()).await,
            Ok(Written::Report { applied: true })
        ));
        assert!(matches!(
            submit(3, fresh).await,
            Ok(Written::Report { applied: true })
        ));
        let host = backend.open().unwrap().host("h").unwrap().unwrap();
        assert_eq!((host.last_seq, host.dropped_reports), (3, 0));
    }
}
