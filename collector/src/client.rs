//! Connecting to a collector, for the ops command line and the image
//! pipeline: the URL decides plaintext (`http://`) or TLS (`https://`), and
//! a client certificate is presented when one is given (mutual TLS).

use std::path::Path;
use std::time::Duration;

use driftwatch_proto::pb::v1::fleet_service_client::FleetServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::server::TlsFiles;

pub use driftwatch_proto::text::error_chain;

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid server URL {url}: {message}")]
    Url { url: String, message: String },
    #[error("cannot read {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("TLS client certificate needs both --tls-cert and --tls-key")]
    TlsIncomplete,
    #[error("{url} is https:// but no --tls-ca was given to verify the server")]
    NoCa { url: String },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ConnectError> {
    std::fs::read(path).map_err(|source| ConnectError::File {
        what,
        path: path.display().to_string(),
        source,
    })
}

/// An endpoint for `url` with TLS set up from `tls`.
pub fn endpoint(url: &str, tls: &TlsFiles) -> Result<Endpoint, ConnectError> {
    let bad = |message: String| ConnectError::Url {
        url: url.to_string(),
        message,
    };
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| bad(e.to_string()))?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        return Err(bad("use http:// or https://".into()));
    }
    if https {
        let Some(ca) = &tls.ca else {
            return Err(ConnectError::NoCa {
                url: url.to_string(),
            });
        };
        let mut config =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("CA", ca)?));
        match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read("certificate", cert)?,
                    read("private key", key)?,
                ));
            }
            (None, None) => {}
            _ => return Err(ConnectError::TlsIncomplete),
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| bad(e.to_string()))?;
    }
    Ok(endpoint)
}

/// A connected fleet client.
pub async fn fleet(url: &str, tls: &TlsFiles) -> Result<FleetServiceClient<Channel>, ConnectError> {
    let channel = endpoint(url, tls)?
        .connect()
        .await
        .map_err(|e| ConnectError::Connect {
            url: url.to_string(),
            message: error_chain(&e),
        })?;
    // A host report carries up to 10,000 deviations with their values.
    Ok(FleetServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024))
}
