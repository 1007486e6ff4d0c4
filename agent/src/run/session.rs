//! The agent's session with the collector: one long-lived bidirectional
//! stream, reopened whenever it breaks.
//!
//! Per connection: send `Hello`, wait for `Welcome { last_applied_seq }`,
//! let the spool drop what the collector already has, then send every
//! spooled report in seq order and each new one as it is committed. An
//! `Ack { seq }` removes reports up to `seq` from the spool. A heartbeat
//! goes out every `--heartbeat` so the collector knows an idle agent is
//! alive.
//!
//! Nothing is lost when the collector is away: reports stay in the spool
//! (scanning goes on meanwhile) and the next session replays them. So the
//! session never needs to remember what it sent: a report sent but not
//! acknowledged is simply sent again, and the collector deduplicates by
//! seq. Reconnects back off exponentially (0.5 s doubling to 30 s) with
//! full jitter, so a fleet whose collector restarts does not reconnect in
//! lockstep.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use driftwatch_proto::pb::v1 as pb;
use pb::agent_message::Body as Outbound;
use pb::agent_service_client::AgentServiceClient;
use pb::collector_message::Body as Inbound;
use tokio::sync::{mpsc, watch};
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tracing::{debug, info, warn};

use super::config::{Collector, error_chain};
use super::spool::{SharedSpool, SpoolError};

/// Reports (and heartbeats) queued for the wire. Small: the spool on disk
/// is the real queue; this only keeps the stream busy.
const OUTBOUND_QUEUE: usize = 8;

/// A session that lasted this long worked, whatever ended it.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// How far a session got, which decides how soon to retry.
#[derive(Debug, Default)]
struct Progress {
    welcomed: bool,
    acked: bool,
}

/// How often an unreachable collector is mentioned at WARN again.
const UNREACHABLE_REMINDER: Duration = Duration::from_secs(300);

/// How long the collector has to answer Hello.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a session ended (it is then reopened after a backoff).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("collector refused the session: {0}")]
    Rpc(String),
    #[error("no Welcome within {}s", WELCOME_TIMEOUT.as_secs())]
    WelcomeTimeout,
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    #[error("collector closed the stream")]
    Closed,
    #[error("stream broken: {0}")]
    Stream(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// A status with its code, message and underlying cause (a TLS alert, a
/// reset connection), which is where the useful part usually is.
fn status_text(status: &tonic::Status) -> String {
    let message = status.message();
    let mut text = if message.is_empty() {
        format!("{:?}", status.code())
    } else {
        format!("{:?}: {message}", status.code())
    };
    if let Some(source) = std::error::Error::source(status) {
        let cause = error_chain(source);
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Exponential backoff with full jitter.
#[derive(Debug)]
pub struct Backoff {
    /// The cap of the next delay; the delay is uniform in `[0, cap]`.
    cap: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            cap: initial,
            initial,
            max,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.cap.mul_f64(fastrand::f64());
        self.cap = (self.cap * 2).min(self.max);
        delay
    }

    /// After a session that worked: the next failure retries quickly.
    pub fn reset(&mut self) {
        self.cap = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }
}

/// Keeps a session open until `shutdown` turns true, reconnecting with
/// backoff. Returns only on shutdown.
pub async fn maintain(
    collector: Collector,
    hello: pb::Hello,
    heartbeat: Duration,
    spool: SharedSpool,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Backoff::default();
    // Failures since the last session that worked, and when they were last
    // logged at WARN: a collector down for a day must not write a warning
    // every 30 s, but the log must keep saying that it is down.
    let mut failures = 0u64;
    let mut last_warned: Option<tokio::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut progress = Progress::default();
        let started = tokio::time::Instant::now();
        let ended = session(
            &collector,
            &hello,
            heartbeat,
            &spool,
            shutdown.clone(),
            &mut progress,
        )
        .await;
        let welcomed = progress.welcomed;
        // A collector that welcomes and then drops every stream (say, over
        // a report it rejects) must not be retried in a tight loop: only a
        // session that got something acknowledged, or lasted, resets the
        // backoff.
        if progress.acked || (welcomed && started.elapsed() >= HEALTHY_SESSION) {
            backoff.reset();
        }
        if welcomed {
            failures = 0;
            last_warned = None;
        }
        let error = match ended {
            Ok(()) => return,
            Err(e) => e,
        };
        failures += 1;
        let delay = backoff.next_delay();
        let pending = spool.subscribe().borrow().pending_reports;
        let retry_in_ms = delay.as_millis() as u64;
        if welcomed {
            warn!(collector = collector.url(), error = %error, retry_in_ms, pending_reports = pending, "disconnected from collector; reconnecting");
        } else if last_warned.is_none_or(|t| t.elapsed() >= UNREACHABLE_REMINDER) {
            last_warned = Some(tokio::time::Instant::now());
            warn!(collector = collector.url(), error = %error, attempts = failures, retry_in_ms, pending_reports = pending, "collector unreachable; reports stay spooled, retrying");
        } else {
            debug!(collector = collector.url(), error = %error, attempts = failures, retry_in_ms, "collector still unreachable");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = super::stopped(&mut shutdown) => return,
        }
    }
}

/// One session, from connect to the first error or to shutdown (`Ok`).
async fn session(
    collector: &Collector,
    hello: &pb::Hello,
    heartbeat: Duration,
    spool: &SharedSpool,
    mut shutdown: watch::Receiver<bool>,
    progress: &mut Progress,
) -> Result<(), SessionError> {
    let channel = tokio::select! {
        c = collector.endpoint().connect() => c.map_err(|e| SessionError::Connect(error_chain(&e)))?,
        _ = super::stopped(&mut shutdown) => return Ok(()),
    };
    let mut client = AgentServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    tx.send(message(Outbound::Hello(hello.clone())))
        .await
        .map_err(|_| SessionError::Closed)?;
    let response = tokio::select! {
        r = client.session(ReceiverStream::new(rx)) => r.map_err(|s| SessionError::Rpc(status_text(&s)))?,
        _ = super::stopped(&mut shutdown) => return Ok(()),
    };
    let mut inbound = response.into_inner();
    let first = tokio::select! {
        m = tokio::time::timeout(WELCOME_TIMEOUT, inbound.message()) => m.map_err(|_| SessionError::WelcomeTimeout)?,
        _ = super::stopped(&mut shutdown) => return Ok(()),
    };
    let last_applied = match first {
        Ok(Some(pb::CollectorMessage {
            body: Some(Inbound::Welcome(w)),
        })) => w.last_applied_seq,
        Ok(Some(_)) => return Err(SessionError::Protocol("first message is not Welcome")),
        Ok(None) => return Err(SessionError::Closed),
        Err(status) => return Err(SessionError::Stream(status_text(&status))),
    };
    progress.welcomed = true;
    let welcome = spool.with(move |s| s.welcome(last_applied)).await?;
    let status = *spool.subscribe().borrow();
    info!(
        collector = collector.url(),
        tls = collector.uses_tls(),
        last_applied_seq = last_applied,
        already_applied = welcome.removed,
        pending_reports = status.pending_reports,
        "connected to collector"
    );
    if welcome.shifted_by > 0 {
        warn!(
            last_applied_seq = last_applied,
            shifted_by = welcome.shifted_by,
            "the collector has applied seqs this state directory never assigned (state directory wiped, or another agent with this host id); spooled reports move above them"
        );
    }
    if welcome.collector_regressed {
        warn!(
            last_applied_seq = last_applied,
            "the collector has fewer reports than it acknowledged (it lost data); the next scan is a snapshot"
        );
    }

    // The highest seq sent on this stream: an Ack above it (a confused
    // collector) must not delete reports it never received.
    let sent = Arc::new(AtomicU64::new(last_applied));
    let mut sender = tokio::spawn(send_spooled(
        spool.clone(),
        tx.clone(),
        last_applied,
        Arc::clone(&sent),
    ));
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // A JoinHandle must not be polled again once it has completed.
    let mut sender_finished = false;
    let result = loop {
        tokio::select! {
            _ = super::stopped(&mut shutdown) => break Ok(()),
            incoming = inbound.message() => match incoming {
                Ok(Some(pb::CollectorMessage { body: Some(Inbound::Ack(ack)) })) => {
                    let through = ack.seq.min(sent.load(Ordering::Acquire));
                    if through < ack.seq {
                        warn!(ack = ack.seq, sent = through, "the collector acknowledged reports it was never sent; ignoring the excess");
                    }
                    let removed = spool.with(move |s| s.ack(through)).await;
                    progress.acked = true;
                    debug!(seq = ack.seq, removed, "ack");
                }
                Ok(Some(pb::CollectorMessage { body: Some(Inbound::Welcome(_)) })) => {
                    break Err(SessionError::Protocol("a second Welcome"));
                }
                // A message from a newer collector that this agent does not
                // know: harmless to ignore.
                Ok(Some(_)) => debug!("ignoring an unknown message from the collector"),
                Ok(None) => break Err(SessionError::Closed),
                Err(status) => break Err(SessionError::Stream(status_text(&status))),
            },
            _ = ticks.tick() => {
                let beat = message(Outbound::Heartbeat(pb::Heartbeat { sent_at_unix: unix_now() }));
                // A full queue means reports are flowing, which says as much.
                let _ = tx.try_send(beat);
            }
            done = &mut sender => {
                sender_finished = true;
                break Err(match done {
                    Ok(()) => SessionError::Closed,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(_) => SessionError::Closed,
                });
            }
        }
    };
    if !sender_finished {
        sender.abort();
        // Wait for it to be gone: it holds the spool.
        let _ = sender.await;
    }
    result
}

/// Sends committed reports after wire seq `cursor`, in order, for as long
/// as the stream takes them.
async fn send_spooled(
    spool: SharedSpool,
    tx: mpsc::Sender<pb::AgentMessage>,
    mut cursor: u64,
    sent: Arc<AtomicU64>,
) {
    let mut status = spool.subscribe();
    loop {
        // Marked seen before reading, so a commit that lands while reading
        // wakes the wait below.
        status.borrow_and_update();
        while let Some(report) = spool.with(move |s| s.read_after(cursor)).await {
            cursor = report.seq;
            let (seq, changes) = (report.seq, report.changes.len());
            if tx.send(message(Outbound::Report(report))).await.is_err() {
                return;
            }
            sent.store(seq, Ordering::Release);
            debug!(seq, changes, "sent report");
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}

fn message(body: Outbound) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut caps = Vec::new();
        for _ in 0..10 {
            caps.push(b.cap);
            let d = b.next_delay();
            assert!(d <= *caps.last().unwrap());
        }
        assert_eq!(caps[0], Duration::from_millis(500));
        assert_eq!(caps[1], Duration::from_secs(1));
        assert_eq!(caps[6], Duration::from_secs(30));
        assert_eq!(caps[9], Duration::from_secs(30));
        b.reset();
        assert_eq!(b.cap, Duration::from_millis(500));
    }
}
