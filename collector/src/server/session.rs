//! `AgentService/Session`: one long-lived stream per agent.
//!
//! Reports are pipelined: each is validated and queued for the writer as it
//! arrives, and an ack task awaits their commits in order and acknowledges
//! each one only once it is on disk. A report that fails validation ends the
//! session with `INVALID_ARGUMENT` after the acks for everything before it
//! have been sent; nothing of the bad report is stored.

use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::pb::v1 as pb;
use pb::agent_message::Body;
use pb::agent_service_server::AgentService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::Config;
use crate::ingest::{Pending, SessionFate, Writer};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::query::{Connected, Connections};
use crate::store::{SessionOpen, Write, Written};
use crate::{time, wire};

/// An agent that connects but says nothing is dropped after this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(15);
/// Reports queued for commit per session before reading slows down.
const IN_FLIGHT: usize = 256;
/// How long a session holds a report slot while its agent says nothing.
const SLOT_IDLE: Duration = Duration::from_millis(50);

/// The agent-facing service.
#[derive(Debug, Clone)]
pub struct Sessions {
    pub writer: Writer,
    pub config: Arc<Config>,
    pub connections: Arc<Connections>,
    pub notifier: Arc<Notifier>,
    pub metrics: Arc<Metrics>,
}

type Outbound = mpsc::Sender<Result<pb::CollectorMessage, Status>>;

#[tonic::async_trait]
impl AgentService for Sessions {
    type SessionStream = ReceiverStream<Result<pb::CollectorMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let peer = request
            .remote_addr()
            .map_or_else(|| "unknown peer".to_string(), |a| a.to_string());
        let names = crate::access::peer_names(&request);
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no Hello within 15 s"))??;
        let hello = match first.and_then(|m| m.body) {
            Some(Body::Hello(hello)) => hello,
            Some(_) => {
                return Err(Status::failed_precondition(
                    "the first message of a session must be Hello",
                ));
            }
            None => return Err(Status::invalid_argument("the session ended before Hello")),
        };
        let open = wire::session_open(&hello, time::now())
            .map_err(|e| Status::invalid_argument(format!("invalid Hello: {e}")))?;
        let host_id = open.host_id.clone();
        let identity = open.clone();
        if let Err(denied) = self.config.access.check_agent(names.as_deref(), &host_id) {
            tracing::warn!(%host_id, %peer, "agent refused: {}", denied.message());
            return Err(denied);
        }
        let last_applied_seq = match self.writer.write(Write::Session(open)).await {
            Ok(Written::Session { last_applied_seq }) => last_applied_seq,
            Ok(other) => return Err(Status::internal(format!("unexpected {other:?}"))),
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        tracing::info!(%host_id, %peer, last_applied_seq, "agent session opened");
        self.metrics
            .sessions_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (outbound, receiver) = mpsc::channel(IN_FLIGHT + 8);
        let welcome = pb::CollectorMessage {
            body: Some(pb::collector_message::Body::Welcome(pb::Welcome {
                last_applied_seq,
            })),
        };
        outbound
            .send(Ok(welcome))
            .await
            .map_err(|_| Status::cancelled("agent went away"))?;
        let session = Session {
            fate: SessionFate::default(),
            connected: self.connections.connect(&host_id),
            host_id,
            identity,
            notifier: self.notifier.clone(),
            metrics: self.metrics.clone(),
            writer: self.writer.clone(),
            config: self.config.clone(),
        };
        tokio::spawn(session.run(inbound, outbound));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

struct Session {
    host_id: String,
    /// Fails this session's later reports once one could not be stored.
    fate: SessionFate,
    /// What the agent said in its Hello, for alert bodies.
    identity: SessionOpen,
    notifier: Arc<Notifier>,
    metrics: Arc<Metrics>,
    writer: Writer,
    config: Arc<Config>,
    #[allow(dead_code, reason = "held for its Drop: marks the host connected")]
    connected: Connected,
}

impl Session {
    async fn run(self, mut inbound: Streaming<pb::AgentMessage>, outbound: Outbound) {
        let (acks, pending) = mpsc::channel(IN_FLIGHT);
        let acker = tokio::spawn(acknowledge(pending, outbound.clone(), self.metrics.clone()));
        let ending = self.read(&mut inbound, &acks).await;
        // Every report read before the end is acknowledged before the
        // session's final status.
        drop(acks);
        let _ = acker.await;
        match ending {
            Ok(()) => tracing::info!(host_id = %self.host_id, "agent session closed"),
            Err(status) => {
                tracing::warn!(host_id = %self.host_id, "agent session ended: {}", status.message());
                let _ = outbound.send(Err(status)).await;
            }
        }
    }

    async fn reserve(&self) -> Result<crate::ingest::Slot, Status> {
        self.writer
            .reserve()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    async fn read(
        &self,
        inbound: &mut Streaming<pb::AgentMessage>,
        acks: &mpsc::Sender<(u64, usize, Pending)>,
    ) -> Result<(), Status> {
        let mut previous_seq = 0;
        loop {
            // A slot first: under load, sessions wait here with their data
            // still in flow control rather than decoded in memory. A session
            // with nothing to say gives its slot back after SLOT_IDLE and
            // waits without one (reading is cancel-safe: tonic keeps the
            // buffered bytes in the stream), so thousands of idle agents
            // cannot hold every slot while others have reports to store.
            let slot = self.reserve().await?;
            let (message, slot) = match tokio::time::timeout(SLOT_IDLE, inbound.message()).await {
                Ok(message) => (message?, Some(slot)),
                Err(_) => {
                    drop(slot);
                    (inbound.message().await?, None)
                }
            };
            let Some(message) = message else {
                return Ok(());
            };
            match message.body {
                Some(Body::Report(report)) => {
                    if report.seq <= previous_seq {
                        return Err(Status::invalid_argument(format!(
                            "report seq {} is not above the previous report's {previous_seq}",
                            report.seq
                        )));
                    }
                    previous_seq = report.seq;
                    let write = wire::report_write(
                        &self.identity,
                        &report,
                        &self.config.limits,
                        &self.config.replacement,
                        &self.notifier,
                        time::now(),
                    )
                    .map_err(|e| {
                        self.metrics
                            .reports_rejected
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        Status::invalid_argument(e.0)
                    })?;
                    let changes = report.changes.len();
                    drop(report);
                    let slot = match slot {
                        Some(slot) => slot,
                        None => self.reserve().await?,
                    };
                    let pending = self
                        .writer
                        .submit_in(Write::Report(write), Some(slot), Some(&self.fate))
                        .await
                        .map_err(|e| Status::unavailable(e.to_string()))?;
                    if acks.send((previous_seq, changes, pending)).await.is_err() {
                        // The ack task stopped: the agent is gone or the
                        // store failed; it has sent the status.
                        return Ok(());
                    }
                }
                Some(Body::Heartbeat(_)) => {
                    // Liveness only: not awaited, not acknowledged.
                    let _ = self
                        .writer
                        .submit(Write::Heartbeat {
                            host_id: self.host_id.clone(),
                            at: time::now(),
                        })
                        .await;
                }
                Some(Body::Hello(_)) => {
                    return Err(Status::failed_precondition(
                        "Hello may be sent only once per session",
                    ));
                }
                None => return Err(Status::invalid_argument("empty AgentMessage")),
            }
        }
    }
}

/// Sends `Ack(seq)` for each report, in order, once it is committed.
async fn acknowledge(
    mut pending: mpsc::Receiver<(u64, usize, Pending)>,
    outbound: Outbound,
    metrics: Arc<Metrics>,
) {
    while let Some((seq, changes, commit)) = pending.recv().await {
        let message = match commit.committed().await {
            Ok(Written::Report { applied }) => {
                if applied {
                    metrics.count_report(changes);
                }
                Ok(pb::CollectorMessage {
                    body: Some(pb::collector_message::Body::Ack(pb::Ack { seq })),
                })
            }
            Ok(other) => Err(Status::internal(format!(
                "report {seq}: the store answered {other:?}"
            ))),
            Err(e) => Err(Status::unavailable(format!(
                "report {seq} was not stored ({e}); replay it"
            ))),
        };
        let failed = message.is_err();
        if outbound.send(message).await.is_err() || failed {
            return;
        }
    }
}
