//! `driftwatch-collector serve`: the gRPC server.
//!
//! Everything that can be wrong with the setup (config, TLS files, a
//! plaintext listener on a public address, the data dir) is checked before
//! the port is bound, so a bad deployment fails at once with a clear
//! message instead of half-working.
//!
//! Served on one port: the agent sessions, the fleet service, the standard
//! `grpc.health.v1` health service and server reflection (v1 and v1alpha),
//! so generic gRPC tools work against it.

pub mod fleet;
pub mod session;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use driftwatch_proto::pb::v1::agent_service_server::AgentServiceServer;
use driftwatch_proto::pb::v1::fleet_service_server::FleetServiceServer;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Request;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

use crate::config::Config;
use crate::ingest::Writer;
use crate::query::{Connections, Queries};
use crate::store::sqlite::SqliteBackend;
use crate::store::{Backend, StoreError};

/// PEM files for TLS; with `ca`, clients must present a certificate it
/// signed (mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.ca.is_none()
    }
}

#[derive(Debug)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub config: Config,
    pub tls: TlsFiles,
    /// Allow plaintext on a non-loopback address.
    pub insecure: bool,
    /// The dashboard, JSON API and metrics.
    pub http: Option<SocketAddr>,
    /// The bearer token HTTP changes need.
    pub http_token_file: Option<PathBuf>,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve plaintext on {0}, which is not a loopback address: agents' reports \
         and fleet commands would cross the network unauthenticated. Give --tls-cert, --tls-key \
         and --tls-ca for mutual TLS, or --insecure if the network is trusted"
    )]
    PlaintextOnNetwork(SocketAddr),
    #[error("TLS needs both --tls-cert and --tls-key")]
    TlsIncomplete,
    #[error("cannot read {what} {path}: {source}")]
    TlsFile {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("invalid TLS setup: {0}")]
    Tls(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Transport(String),
    #[error(
        "refusing to serve the dashboard and HTTP API in plaintext on {0}, which is not a \
         loopback address; give --tls-cert and --tls-key (it then speaks HTTPS), or pass \
         --insecure if the network is trusted"
    )]
    HttpOnNetwork(SocketAddr),
    #[error("--http-token-file {path}: {message}")]
    Token { path: String, message: String },
}

/// Reads the HTTP bearer token: at least 16 characters, no whitespace.
fn read_token(path: &Path) -> Result<blake3::Hash, ServeError> {
    let bad = |message: String| ServeError::Token {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let token = text.trim();
    if token.len() < 16 || token.chars().any(char::is_whitespace) {
        return Err(bad(
            "the token must be at least 16 characters with no whitespace".into(),
        ));
    }
    Ok(blake3::hash(token.as_bytes()))
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|source| ServeError::TlsFile {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// Builds the TLS config, or `None` for plaintext (allowed on loopback, or
/// with `insecure`).
fn tls_config(options: &ServeOptions) -> Result<Option<ServerTlsConfig>, ServeError> {
    let tls = &options.tls;
    if tls.is_empty() {
        if !options.listen.ip().is_loopback() && !options.insecure {
            return Err(ServeError::PlaintextOnNetwork(options.listen));
        }
        return Ok(None);
    }
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Err(ServeError::TlsIncomplete);
    };
    let identity = Identity::from_pem(
        read_pem("certificate", cert)?,
        read_pem("private key", key)?,
    );
    let mut config = ServerTlsConfig::new().identity(identity);
    match &tls.ca {
        Some(ca) => {
            config = config.client_ca_root(Certificate::from_pem(read_pem("CA", ca)?));
            if options.config.access.fleet_clients.is_empty() {
                tracing::warn!(
                    "access.fleet_clients is empty: any certificate from the CA, agents' \
                     included, may use the fleet service (acknowledge, retire, register)"
                );
            }
        }
        None => tracing::warn!(
            "TLS without --tls-ca: clients are not authenticated; any client can report"
        ),
    }
    Ok(Some(config))
}

/// Every agent holds a connection: raise the soft descriptor limit to the
/// hard one (systemd's default soft limit of 1024 would cap the fleet), and
/// return the limit now in force.
pub fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current
}

/// Runs until `shutdown` completes. `on_listening` gets the bound address
/// (useful with port 0).
pub async fn serve(
    options: ServeOptions,
    on_listening: impl FnOnce(SocketAddr),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = tls_config(&options)?;
    // The dashboard speaks HTTPS with the collector's own certificate.
    let https = match (&options.tls.cert, &options.tls.key, options.http) {
        (Some(cert), Some(key), Some(_)) => Some(
            crate::http::tls_acceptor(
                &read_pem("certificate", cert)?,
                &read_pem("private key", key)?,
            )
            .map_err(ServeError::Tls)?,
        ),
        _ => None,
    };
    if let Some(http) = options.http
        && https.is_none()
        && !http.ip().is_loopback()
        && !options.insecure
    {
        return Err(ServeError::HttpOnNetwork(http));
    }
    let token = options
        .http_token_file
        .as_deref()
        .map(read_token)
        .transpose()?;
    let backend: Arc<dyn Backend> = Arc::new(SqliteBackend::open(&options.data_dir)?);
    let config = Arc::new(options.config);
    let (writer, _writer_thread) = Writer::start(backend.open()?);
    let connections = Arc::new(Connections::default());
    let metrics = Arc::new(crate::metrics::Metrics::default());
    for warning in &config.alerts.warnings {
        tracing::warn!("alerts: {warning}");
    }
    let notifier = Arc::new(crate::notify::Notifier::new(config.alerts.clone()));
    let queries = Queries::new(
        backend.clone(),
        config.replacement.clone(),
        connections.clone(),
    );

    let sessions = session::Sessions {
        writer: writer.clone(),
        config: config.clone(),
        connections: connections.clone(),
        notifier: notifier.clone(),
        metrics: metrics.clone(),
    };
    let scheduler = crate::queue::Scheduler::new(queries.clone(), writer.clone(), config.queue);
    let fleet = fleet::Fleet {
        writer,
        queries,
        scheduler,
    };
    let (dispatch_queries, dispatch_writer) = (fleet.queries.clone(), fleet.writer.clone());
    let http_state = crate::http::HttpState {
        fleet: fleet.clone(),
        metrics: metrics.clone(),
        connections: connections.clone(),
        token,
    };
    let max_message = config.limits.max_message_bytes;
    let agent_service = AgentServiceServer::new(sessions).max_decoding_message_size(max_message);
    let access = config.access.clone();
    let fleet_service = tonic::service::interceptor::InterceptedService::new(
        FleetServiceServer::new(fleet).max_decoding_message_size(max_message),
        move |request: Request<()>| {
            access
                .check_fleet(crate::access::peer_names(&request).as_deref())
                .map(|()| request)
        },
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<AgentServiceServer<session::Sessions>>()
        .await;
    health
        .set_serving::<FleetServiceServer<fleet::Fleet>>()
        .await;
    let reflection = |builder: tonic_reflection::server::Builder<'static>| {
        builder
            .register_encoded_file_descriptor_set(driftwatch_proto::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection(tonic_reflection::server::Builder::configure())
        .build_v1()
        .map_err(|e| ServeError::Transport(e.to_string()))?;
    let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure())
        .build_v1alpha()
        .map_err(|e| ServeError::Transport(e.to_string()))?;

    let mut server = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_keepalive(Some(Duration::from_secs(60)))
        .tcp_nodelay(true);
    let secure = tls.is_some();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: options.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: options.listen,
        source,
    })?;
    let max_files = raise_open_file_limit();
    // One shutdown signal for both servers.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let dispatcher = tokio::spawn(crate::notify::dispatch(
        notifier,
        dispatch_queries,
        dispatch_writer,
        metrics.clone(),
        stopped.clone(),
    ));
    let http_server = match options.http {
        Some(http) => {
            let listener = tokio::net::TcpListener::bind(http)
                .await
                .map_err(|source| ServeError::Bind { addr: http, source })?;
            let http_addr = listener
                .local_addr()
                .map_err(|source| ServeError::Bind { addr: http, source })?;
            tracing::info!(
                %http_addr,
                https = https.is_some(),
                changes = http_state.token.is_some(),
                "dashboard and HTTP API listening"
            );
            let router = crate::http::router(http_state);
            let stopped = until_stopped(stopped.clone());
            Some(match https {
                Some(acceptor) => {
                    tokio::spawn(crate::http::serve_tls(listener, router, acceptor, stopped))
                }
                None => tokio::spawn(crate::http::serve(listener, router, stopped)),
            })
        }
        None => None,
    };
    tracing::info!(
        %addr,
        tls = secure,
        open_file_limit = max_files.map_or_else(|| "unlimited".into(), |n| n.to_string()),
        store = %backend.describe(),
        "driftwatch-collector listening"
    );
    on_listening(addr);
    server
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(agent_service)
        .add_service(fleet_service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), until_stopped(stopped))
        .await
        .map_err(|e| ServeError::Transport(e.to_string()))?;
    let _ = dispatcher.await;
    if let Some(http) = http_server {
        match http.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ServeError::Transport(format!("HTTP: {e}"))),
            Err(e) => return Err(ServeError::Transport(format!("HTTP: {e}"))),
        }
    }
    tracing::info!("driftwatch-collector stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(listen: &str, tls: TlsFiles, insecure: bool) -> ServeOptions {
        ServeOptions {
            listen: listen.parse().unwrap(),
            data_dir: PathBuf::from("/nonexistent"),
            config: Config::default(),
            tls,
            insecure,
            http: None,
            http_token_file: None,
        }
    }

    #[test]
    fn plaintext_only_on_loopback_unless_insecure() {
        assert!(tls_config(&options("127.0.0.1:1", TlsFiles::default(), false)).is_ok());
        assert!(tls_config(&options("[::1]:1", TlsFiles::default(), false)).is_ok());
        let err = tls_config(&options("0.0.0.0:1", TlsFiles::default(), false)).unwrap_err();
        assert!(matches!(err, ServeError::PlaintextOnNetwork(_)));
        assert!(tls_config(&options("0.0.0.0:1", TlsFiles::default(), true)).is_ok());
        let half = TlsFiles {
            cert: Some("c.pem".into()),
            ..TlsFiles::default()
        };
        assert!(matches!(
            tls_config(&options("0.0.0.0:1", half, false)),
            Err(ServeError::TlsIncomplete)
        ));
        let missing = TlsFiles {
            cert: Some("/nonexistent/c.pem".into()),
            key: Some("/nonexistent/k.pem".into()),
            ca: None,
        };
        let err = tls_config(&options("0.0.0.0:1", missing, false))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot read certificate /nonexistent/c.pem"),
            "{err}"
        );
    }
}
