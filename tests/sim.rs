//! A simulated agent that speaks the real protocol over real gRPC
//! connections: for tests that need many agents or hand-made (hostile)
//! messages, and for the load generator.

use std::time::{SystemTime, UNIX_EPOCH};

use driftwatch_proto::pb::v1 as pb;
use pb::agent_service_client::AgentServiceClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Status, Streaming};

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn hello(host_id: &str) -> pb::Hello {
    pb::Hello {
        host_id: host_id.into(),
        hostname: host_id.into(),
        image_id: "sim".into(),
        image_version: "1".into(),
        manifest_digest: vec![7; 32],
        boot_time_unix: now() - 3_600,
        agent_version: "sim".into(),
        image_build_time_unix: now() - 86_400,
        state_epoch: 1,
    }
}

/// A new `added` deviation for `opt/sim/file-<i>`.
pub fn added(i: u64) -> pb::DeviationChange {
    pb::DeviationChange {
        change: pb::deviation_change::Change::New as i32,
        deviation: Some(pb::Deviation {
            kind: "added".into(),
            subject: Some(pb::deviation::Subject::Path(
                format!("opt/sim/file-{i}").into_bytes(),
            )),
            expected: None,
            actual: Some(pb::Attrs {
                r#type: Some("file".into()),
                mode: Some(0o644),
                size: Some(42),
                blake3: Some(vec![i as u8; 32]),
                ..Default::default()
            }),
        }),
    }
}

/// A report; with `end`, the scan's last, carrying (deviating, observed).
pub fn report(
    seq: u64,
    scan_id: u64,
    changes: Vec<pb::DeviationChange>,
    end: Option<(u64, u64)>,
) -> pb::Report {
    pb::Report {
        seq,
        scan_id,
        changes,
        scan_end: end.map(|(deviating, observed)| pb::ScanEnd {
            finished_at_unix: now(),
            drift_pct: 0.0,
            deviating_items: deviating,
            observed_items: observed,
            entries_checked: observed,
            ..Default::default()
        }),
        dropped_reports: 0,
    }
}

pub fn message(body: pb::agent_message::Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

/// A plaintext channel to `url`, connected now.
pub async fn channel(url: &str) -> Channel {
    Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// An open agent session.
#[derive(Debug)]
pub struct Session {
    pub outbound: mpsc::Sender<pb::AgentMessage>,
    pub inbound: Streaming<pb::CollectorMessage>,
    pub last_applied_seq: u64,
}

impl Session {
    /// Opens a session with `hello` and waits for the Welcome.
    pub async fn open(
        channel: Channel,
        max_message: usize,
        hello: pb::Hello,
    ) -> Result<Session, Status> {
        let (outbound, rx) = mpsc::channel(64);
        outbound
            .send(message(pb::agent_message::Body::Hello(hello)))
            .await
            .expect("queue hello");
        let mut client = AgentServiceClient::new(channel).max_encoding_message_size(max_message);
        let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
        match inbound.message().await? {
            Some(pb::CollectorMessage {
                body: Some(pb::collector_message::Body::Welcome(w)),
            }) => Ok(Session {
                outbound,
                inbound,
                last_applied_seq: w.last_applied_seq,
            }),
            other => Err(Status::internal(format!("expected Welcome, got {other:?}"))),
        }
    }

    pub async fn send(&self, report: pb::Report) {
        // A closed stream shows up as the status on `inbound`.
        let _ = self
            .outbound
            .send(message(pb::agent_message::Body::Report(report)))
            .await;
    }

    /// Reads acks until one covers `seq`; the collector's status if it
    /// ends the stream instead.
    pub async fn wait_ack(&mut self, seq: u64) -> Result<(), Status> {
        loop {
            match self.inbound.message().await? {
                Some(pb::CollectorMessage {
                    body: Some(pb::collector_message::Body::Ack(ack)),
                }) if ack.seq >= seq => return Ok(()),
                Some(_) => continue,
                None => return Err(Status::unknown("stream ended without an ack")),
            }
        }
    }
}

/// Sends arbitrary bytes as the session's request messages, so tests can
/// feed the collector frames that are not valid protobuf.
pub mod raw {
    use bytes::{Buf, BufMut};
    use driftwatch_proto::pb::v1 as pb;
    use prost::Message as _;
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
    use tonic::transport::Channel;
    use tonic::{Status, Streaming};

    #[derive(Debug, Default, Clone, Copy)]
    pub struct RawCodec;

    #[derive(Debug)]
    pub struct RawEncoder;

    #[derive(Debug)]
    pub struct ReplyDecoder;

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = Status;
        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for ReplyDecoder {
        type Item = pb::CollectorMessage;
        type Error = Status;
        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
            let bytes = src.copy_to_bytes(src.remaining());
            pb::CollectorMessage::decode(bytes)
                .map(Some)
                .map_err(|e| Status::internal(e.to_string()))
        }
    }

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = pb::CollectorMessage;
        type Encoder = RawEncoder;
        type Decoder = ReplyDecoder;
        fn encoder(&mut self) -> RawEncoder {
            RawEncoder
        }
        fn decoder(&mut self) -> ReplyDecoder {
            ReplyDecoder
        }
    }

    /// Opens `AgentService/Session` and sends `frames` as its messages.
    pub async fn session(
        channel: Channel,
        frames: Vec<Vec<u8>>,
    ) -> Result<Streaming<pb::CollectorMessage>, Status> {
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let path = http::uri::PathAndQuery::from_static("/driftwatch.v1.AgentService/Session");
        let request = tonic::Request::new(tokio_stream::iter(frames));
        Ok(grpc.streaming(request, path, RawCodec).await?.into_inner())
    }
}
