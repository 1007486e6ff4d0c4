//! The HTTP side of the collector (`serve --http ADDR`): the dashboard, the
//! JSON API under `/api/v1/` and Prometheus `/metrics`.
//!
//! Every API call goes through the same fleet service the gRPC API and the
//! command line use, so the three can never disagree; this module only
//! maps requests to it and its answers to JSON (the same JSON the CLI's
//! `--format json` prints).
//!
//! With the collector's `--tls-cert` and `--tls-key` the port speaks HTTPS
//! with that certificate (no client certificates: browsers rarely have
//! one); without them it is plaintext, allowed only on loopback unless
//! `--insecure`. Reads are open to whoever can reach the port. Changes (ack, retire, drain, release,
//! take) need `Authorization: Bearer <token>` with the token from
//! `--http-token-file`; without that file they are refused. A header token
//! cannot be forged by another site, so no CSRF token is needed.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use driftwatch_proto::pb::v1 as pb;
use pb::fleet_service_server::FleetService;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::metrics::{Metrics, Snapshot};
use crate::output;
use crate::server::fleet::Fleet;

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    pub fleet: Fleet,
    pub metrics: Arc<Metrics>,
    pub connections: Arc<crate::query::Connections>,
    /// BLAKE3 of the bearer token changes need; `None`: changes refused.
    pub token: Option<blake3::Hash>,
}

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/api/v1/hosts", get(hosts))
        .route("/api/v1/hosts/{host_id}", get(host))
        .route("/api/v1/hosts/{host_id}/{action}", post(host_action))
        .route("/api/v1/replacements", get(replacements))
        .route("/api/v1/queue", get(queue))
        .route("/api/v1/queue/take", post(take))
        .route("/api/v1/images", get(images))
        .route("/api/v1/findings", get(findings))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such page") })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (
            "content-security-policy",
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
             frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// A gRPC status from the fleet service as an HTTP answer.
fn status(s: tonic::Status) -> Response {
    use tonic::Code;
    let code = match s.code() {
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::FailedPrecondition | Code::ResourceExhausted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::SERVICE_UNAVAILABLE,
    };
    error(code, s.message())
}

fn json_ok(value: Value) -> Response {
    axum::Json(value).into_response()
}

async fn hosts(State(s): State<HttpState>) -> Response {
    match s
        .fleet
        .list_hosts(tonic::Request::new(pb::ListHostsRequest {}))
        .await
    {
        Ok(r) => json_ok(output::hosts_json(&r.into_inner().hosts)),
        Err(e) => status(e),
    }
}

#[derive(Debug, Deserialize)]
struct HostQuery {
    limit: Option<u32>,
}

async fn host(
    State(s): State<HttpState>,
    Path(host_id): Path<String>,
    Query(q): Query<HostQuery>,
) -> Response {
    let request = pb::GetHostRequest {
        host_id,
        max_deviations: q.limit.unwrap_or(0),
    };
    match s.fleet.get_host(tonic::Request::new(request)).await {
        Ok(r) => json_ok(output::report_json(&r.into_inner())),
        Err(e) => status(e),
    }
}

async fn replacements(State(s): State<HttpState>) -> Response {
    match s
        .fleet
        .list_replacements(tonic::Request::new(pb::ListReplacementsRequest {}))
        .await
    {
        Ok(r) => json_ok(output::hosts_json(&r.into_inner().hosts)),
        Err(e) => status(e),
    }
}

async fn queue(State(s): State<HttpState>) -> Response {
    match s
        .fleet
        .get_queue(tonic::Request::new(pb::GetQueueRequest {}))
        .await
    {
        Ok(r) => json_ok(output::queue_json(&r.into_inner())),
        Err(e) => status(e),
    }
}

async fn images(State(s): State<HttpState>) -> Response {
    match s
        .fleet
        .list_images(tonic::Request::new(pb::ListImagesRequest {}))
        .await
    {
        Ok(r) => json_ok(Value::Array(
            r.into_inner()
                .images
                .iter()
                .map(output::image_json)
                .collect(),
        )),
        Err(e) => status(e),
    }
}

#[derive(Debug, Deserialize)]
struct FindingsQuery {
    min_hosts: Option<u32>,
}

async fn findings(State(s): State<HttpState>, Query(q): Query<FindingsQuery>) -> Response {
    let request = pb::ListFindingsRequest {
        min_hosts: q.min_hosts.unwrap_or(0),
    };
    match s.fleet.list_findings(tonic::Request::new(request)).await {
        Ok(r) => json_ok(output::findings_json(&r.into_inner().findings)),
        Err(e) => status(e),
    }
}

/// Changes need the bearer token; `Some` is the refusal.
fn refused(s: &HttpState, headers: &HeaderMap) -> Option<Response> {
    let Some(expected) = &s.token else {
        return Some(error(
            StatusCode::FORBIDDEN,
            "changes over HTTP are off: start the collector with --http-token-file",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // blake3::Hash compares in constant time.
    if blake3::hash(given.as_bytes()) == *expected {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
        ))
    }
}

#[derive(Debug, Default, Deserialize)]
struct ByBody {
    #[serde(default)]
    by: String,
}

/// The optional `{"by": "name"}` body; the error is for a 400.
fn by(body: &axum::body::Bytes) -> Result<String, String> {
    if body.is_empty() {
        return Ok(String::new());
    }
    serde_json::from_slice::<ByBody>(body)
        .map(|b| b.by)
        .map_err(|e| format!("invalid JSON body: {e}"))
}

async fn host_action(
    State(s): State<HttpState>,
    Path((host_id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Some(denied) = refused(&s, &headers) {
        return denied;
    }
    let by = match by(&body) {
        Ok(by) => by,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let request = pb::HostRequest {
        host_id: host_id.clone(),
    };
    let answer = match action.as_str() {
        "ack" => s.fleet.acknowledge_host(tonic::Request::new(request)).await,
        "retire" => s.fleet.retire_host(tonic::Request::new(request)).await,
        "release" => s.fleet.release_host(tonic::Request::new(request)).await,
        "drain" => {
            s.fleet
                .drain_host(tonic::Request::new(pb::DrainHostRequest { host_id, by }))
                .await
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                "unknown action: use ack, retire, drain or release",
            );
        }
    };
    match answer {
        Ok(r) => json_ok(output::host_json(&r.into_inner())),
        Err(e) => status(e),
    }
}

async fn take(State(s): State<HttpState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(denied) = refused(&s, &headers) {
        return denied;
    }
    let by = match by(&body) {
        Ok(by) => by,
        Err(e) => return error(StatusCode::BAD_REQUEST, &e),
    };
    match s
        .fleet
        .take_next(tonic::Request::new(pb::TakeNextRequest { by }))
        .await
    {
        Ok(r) => {
            let r = r.into_inner();
            match r.host {
                Some(host) => json_ok(output::host_json(&host)),
                None => error(
                    StatusCode::CONFLICT,
                    &format!("nothing to take: {}", r.why_none),
                ),
            }
        }
        Err(e) => status(e),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let hosts = match s.fleet.queries.hosts().await {
        Ok(hosts) => hosts,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    };
    let (pending, abandoned) = s.fleet.queries.alert_backlog().await.unwrap_or((0, 0));
    let text = crate::metrics::render(
        &s.metrics,
        &Snapshot {
            hosts: &hosts,
            connected_agents: s.connections.count(),
            alerts_pending: pending,
            alerts_abandoned: abandoned,
        },
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// HTTPS for the dashboard and API, from PEM files.
pub fn tls_acceptor(cert_pem: &[u8], key_pem: &[u8]) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("private key: {e}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `router` over HTTPS on `listener` until `shutdown`. Each
/// handshake runs in its own task (with a deadline), so a slow or hostile
/// client cannot hold up the others.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors or similar: keep serving the others.
                Err(e) => {
                    tracing::warn!("HTTPS accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let (acceptor, router) = (acceptor.clone(), router.clone());
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp));
            let Ok(Ok(tls)) = handshake.await else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(router);
            // Reads are open, so a client that trickles its headers must
            // not hold a connection (and a descriptor) for ever.
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}
