//! `FleetService`: what ops tools, the image pipeline and schedulers call.

use std::sync::Arc;

use driftwatch_proto::pb::v1 as pb;
use pb::fleet_service_server::FleetService;
use tonic::{Request, Response, Status};

use crate::ingest::Writer;
use crate::query::{HostView, Queries};
use crate::queue::{Queue, QueueError, Scheduler};
use crate::store::{StoreError, Write, Written};
use crate::{time, wire};

#[derive(Debug, Clone)]
pub struct Fleet {
    pub writer: Writer,
    pub queries: Arc<Queries>,
    pub scheduler: Arc<Scheduler>,
}

fn queue_error(e: QueueError) -> Status {
    match e {
        QueueError::NotFound(_) => Status::not_found(e.to_string()),
        QueueError::NotFlagged { .. } | QueueError::NotDraining { .. } => {
            Status::failed_precondition(e.to_string())
        }
        QueueError::HeldBack { .. } => Status::resource_exhausted(e.to_string()),
        QueueError::Store(_) | QueueError::Ingest(_) => Status::unavailable(e.to_string()),
    }
}

/// A scheduler's name as recorded: printable, bounded; "unnamed" if empty.
fn who(by: &str) -> Result<String, Status> {
    if by.is_empty() {
        return Ok("unnamed".into());
    }
    wire::check_host_id(by)
        .map(|()| by.to_string())
        .map_err(|e| Status::invalid_argument(format!("by: {}", e.0.replace("host_id", "name"))))
}

fn store_error(e: StoreError) -> Status {
    Status::unavailable(e.to_string())
}

fn summary(view: &HostView) -> pb::HostSummary {
    wire::host_summary(view)
}

impl Fleet {
    async fn existing(&self, host_id: &str) -> Result<HostView, Status> {
        wire::check_host_id(host_id).map_err(|e| Status::invalid_argument(e.0))?;
        self.queries
            .host(host_id.to_string())
            .await
            .map_err(store_error)?
            .ok_or_else(|| Status::not_found(format!("no host {host_id}")))
    }

    async fn host_write(&self, host_id: &str, write: Write) -> Result<pb::HostSummary, Status> {
        match self.writer.write(write).await {
            Ok(Written::Host { found: true }) => Ok(summary(&self.existing(host_id).await?)),
            Ok(_) => Err(Status::not_found(format!("no host {host_id}"))),
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }
}

#[tonic::async_trait]
impl FleetService for Fleet {
    async fn list_hosts(
        &self,
        _: Request<pb::ListHostsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let hosts = self.queries.hosts().await.map_err(store_error)?;
        Ok(Response::new(pb::ListHostsResponse {
            hosts: hosts.iter().map(summary).collect(),
        }))
    }

    async fn get_host(
        &self,
        request: Request<pb::GetHostRequest>,
    ) -> Result<Response<pb::HostReport>, Status> {
        let request = request.into_inner();
        let host_id = request.host_id;
        wire::check_host_id(&host_id).map_err(|e| Status::invalid_argument(e.0))?;
        let limit = match request.max_deviations as usize {
            0 => crate::query::MAX_DEVIATIONS,
            n => n.min(crate::query::MAX_DEVIATIONS),
        };
        let report = self
            .queries
            .report(host_id.clone(), limit)
            .await
            .map_err(store_error)?
            .ok_or_else(|| Status::not_found(format!("no host {host_id}")))?;
        Ok(Response::new(pb::HostReport {
            host: Some(summary(&report.view)),
            deviations: report.deviations.iter().map(wire::host_deviation).collect(),
            history: report.history.iter().map(wire::drift_point).collect(),
        }))
    }

    async fn list_replacements(
        &self,
        _: Request<pb::ListReplacementsRequest>,
    ) -> Result<Response<pb::ListHostsResponse>, Status> {
        let hosts = self.queries.replacements().await.map_err(store_error)?;
        Ok(Response::new(pb::ListHostsResponse {
            hosts: hosts.iter().map(summary).collect(),
        }))
    }

    async fn acknowledge_host(
        &self,
        request: Request<pb::HostRequest>,
    ) -> Result<Response<pb::HostSummary>, Status> {
        let host_id = request.into_inner().host_id;
        let view = self.existing(&host_id).await?;
        let codes = view
            .assessment
            .reasons
            .iter()
            .map(|r| r.code.clone())
            .collect();
        let write = Write::Acknowledge {
            host_id: host_id.clone(),
            codes,
            at: time::now(),
        };
        tracing::info!(%host_id, "host acknowledged");
        Ok(Response::new(self.host_write(&host_id, write).await?))
    }

    async fn retire_host(
        &self,
        request: Request<pb::HostRequest>,
    ) -> Result<Response<pb::HostSummary>, Status> {
        let host_id = request.into_inner().host_id;
        wire::check_host_id(&host_id).map_err(|e| Status::invalid_argument(e.0))?;
        let write = Write::Retire {
            host_id: host_id.clone(),
            at: time::now(),
        };
        let summary = self.host_write(&host_id, write).await?;
        tracing::info!(%host_id, "host retired");
        Ok(Response::new(summary))
    }

    async fn register_image(
        &self,
        request: Request<pb::RegisterImageRequest>,
    ) -> Result<Response<pb::Image>, Status> {
        let record = wire::image_record(&request.into_inner(), time::now())
            .map_err(|e| Status::invalid_argument(e.0))?;
        let stored = match self.writer.write(Write::RegisterImage(record)).await {
            Ok(Written::Image(stored)) => stored,
            Ok(other) => return Err(Status::internal(format!("unexpected {other:?}"))),
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        tracing::info!(
            image_id = %stored.image_id,
            image_version = %stored.image_version,
            digest = %crate::policy::short_hex(&stored.manifest_digest),
            "image registered"
        );
        let view = self
            .queries
            .images()
            .await
            .map_err(store_error)?
            .into_iter()
            .find(|i| i.record.manifest_digest == stored.manifest_digest);
        Ok(Response::new(match view {
            Some(v) => wire::image(&v.record, v.hosts, v.superseded_by.as_ref()),
            None => wire::image(&stored, 0, None),
        }))
    }

    async fn list_images(
        &self,
        _: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let images = self.queries.images().await.map_err(store_error)?;
        Ok(Response::new(pb::ListImagesResponse {
            images: images
                .iter()
                .map(|v| wire::image(&v.record, v.hosts, v.superseded_by.as_ref()))
                .collect(),
        }))
    }

    async fn list_findings(
        &self,
        request: Request<pb::ListFindingsRequest>,
    ) -> Result<Response<pb::ListFindingsResponse>, Status> {
        let min_hosts = match request.into_inner().min_hosts {
            0 => 2,
            n => u64::from(n),
        };
        let findings = self
            .queries
            .findings(min_hosts)
            .await
            .map_err(store_error)?;
        Ok(Response::new(pb::ListFindingsResponse {
            findings: findings.iter().map(wire::finding).collect(),
        }))
    }

    async fn get_queue(
        &self,
        _: Request<pb::GetQueueRequest>,
    ) -> Result<Response<pb::Queue>, Status> {
        let queue = self.scheduler.queue().await.map_err(store_error)?;
        Ok(Response::new(queue_pb(&queue)))
    }

    async fn take_next(
        &self,
        request: Request<pb::TakeNextRequest>,
    ) -> Result<Response<pb::TakeNextResponse>, Status> {
        let by = who(&request.into_inner().by)?;
        let (taken, queue) = self.scheduler.take_next(&by).await.map_err(queue_error)?;
        let why_none = match (&taken, queue.entries.iter().filter(|e| !e.draining).count()) {
            (Some(_), _) => String::new(),
            (None, 0) => "no flagged hosts".to_string(),
            (None, n) => format!(
                "{n} flagged hosts, all held back by the disruption budget ({} draining)",
                queue.draining_now
            ),
        };
        Ok(Response::new(pb::TakeNextResponse {
            host: taken.as_ref().map(summary),
            why_none,
        }))
    }

    async fn drain_host(
        &self,
        request: Request<pb::DrainHostRequest>,
    ) -> Result<Response<pb::HostSummary>, Status> {
        let request = request.into_inner();
        wire::check_host_id(&request.host_id).map_err(|e| Status::invalid_argument(e.0))?;
        let by = who(&request.by)?;
        let view = self
            .scheduler
            .drain(&request.host_id, &by)
            .await
            .map_err(queue_error)?;
        Ok(Response::new(summary(&view)))
    }

    async fn release_host(
        &self,
        request: Request<pb::HostRequest>,
    ) -> Result<Response<pb::HostSummary>, Status> {
        let host_id = request.into_inner().host_id;
        wire::check_host_id(&host_id).map_err(|e| Status::invalid_argument(e.0))?;
        let view = self
            .scheduler
            .release(&host_id)
            .await
            .map_err(queue_error)?;
        Ok(Response::new(summary(&view)))
    }
}

pub fn queue_pb(queue: &Queue) -> pb::Queue {
    pb::Queue {
        max_draining: queue.budget.max_draining,
        max_draining_pct: queue.budget.max_draining_pct,
        draining_now: queue.draining_now,
        entries: queue
            .entries
            .iter()
            .map(|e| pb::QueueEntry {
                host: Some(summary(&e.view)),
                state: if e.draining { "draining" } else { "flagged" }.into(),
                priority: e.priority,
                held_back: e.held_back.clone().unwrap_or_default(),
            })
            .collect(),
    }
}
