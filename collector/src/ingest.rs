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
}

type Reply = oneshot::Sender<Result<Written, IngestError>>;

/// A queued write, its reply, and the report slot it holds until its
/// commit (if any).
type Job = (Write, Reply, Option<Slot>);

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
        self.submit_in(write, None).await
    }

    /// Queues a write holding `slot` until it is committed.
    pub async fn submit_in(
        &self,
        write: Write,
        slot: Option<Slot>,
    ) -> Result<Pending, IngestError> {
        let (reply, receiver) = oneshot::channel();
        self.queue
            .send((write, reply, slot))
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

fn run(mut store: Box<dyn Store>, mut receiver: mpsc::Receiver<Job>) {
    let mut writes = Vec::new();
    let mut replies = Vec::new();
    let mut slots = Vec::new();
    while let Some((write, reply, slot)) = receiver.blocking_recv() {
        let mut budget = changes(&write);
        writes.push(write);
        replies.push(reply);
        slots.extend(slot);
        while budget < MAX_BATCH_CHANGES {
            match receiver.try_recv() {
                Ok((write, reply, slot)) => {
                    budget += changes(&write);
                    writes.push(write);
                    replies.push(reply);
                    slots.extend(slot);
                }
                Err(_) => break,
            }
        }
        match store.write(&writes) {
            Ok(results) => {
                for (reply, result) in replies.drain(..).zip(results) {
                    let _ = reply.send(Ok(result));
                }
            }
            Err(e) => {
                tracing::error!("commit of {} writes failed: {e}", writes.len());
                let e = Arc::new(e);
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(IngestError::Store(e.clone())));
                }
            }
        }
        writes.clear();
        slots.clear();
    }
}
