//! `run`'s configuration, validated before anything is started.
//!
//! Everything that can be wrong with the command line (a URL the agent
//! cannot use, TLS files that do not exist, a key without its certificate,
//! a zero interval) is found here, so a bad configuration exits at once
//! with one clear message instead of after the first scan or retrying a
//! connection forever.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Uri};

/// Defaults, as documented in `--help`.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
pub const DEFAULT_STATE_DIR: &str = "/var/lib/driftwatch";
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--collector {url:?}: {reason}")]
    CollectorUrl { url: String, reason: String },
    #[error("--tls-cert and --tls-key go together: give both or neither")]
    HalfIdentity,
    #[error("--tls-cert/--tls-key need --tls-ca (the collector's CA)")]
    IdentityWithoutCa,
    #[error("cannot read {flag} {path}: {source}")]
    TlsFile {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {path} holds no PEM block")]
    NotPem { flag: &'static str, path: PathBuf },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("--{flag} must be more than zero")]
    Zero { flag: &'static str },
    #[error("--root {path}: {reason}")]
    Root { path: PathBuf, reason: String },
}

/// Everything `run` needs, checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub collector: Collector,
    /// The live root to verify.
    pub root: PathBuf,
    /// The image manifest it is verified against.
    pub manifest: PathBuf,
    /// Overrides the machine id as the host's identity.
    pub host_id: Option<String>,
    /// Time between the starts of two scans.
    pub interval: Duration,
    pub state_dir: PathBuf,
    /// Time between heartbeats on an idle session.
    pub heartbeat: Duration,
    /// Scan worker threads.
    pub threads: usize,
    /// Cap on bytes hashed per second; `None` is unlimited.
    pub max_read_rate: Option<u64>,
    pub spool_max_bytes: u64,
    pub one_file_system: bool,
    /// One scan, deliver everything, exit.
    pub once: bool,
}

impl Config {
    /// Checks what can be checked without side effects.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.interval.is_zero() {
            return Err(ConfigError::Zero { flag: "interval" });
        }
        if self.heartbeat.is_zero() {
            return Err(ConfigError::Zero { flag: "heartbeat" });
        }
        if self.threads == 0 {
            return Err(ConfigError::Zero { flag: "threads" });
        }
        if self.spool_max_bytes == 0 {
            return Err(ConfigError::Zero {
                flag: "spool-max-bytes",
            });
        }
        if self.max_read_rate == Some(0) {
            return Err(ConfigError::Zero {
                flag: "max-read-rate",
            });
        }
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(ConfigError::Root {
                path: self.root.clone(),
                reason: "not a directory".into(),
            }),
            Err(e) => Err(ConfigError::Root {
                path: self.root.clone(),
                reason: e.to_string(),
            }),
        }
    }
}

/// Where the collector is and how to reach it.
#[derive(Clone)]
pub struct Collector {
    /// As given, for logs (a URL here never holds a secret: credentials in
    /// it are refused).
    url: String,
    endpoint: Endpoint,
    tls: bool,
}

impl fmt::Debug for Collector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the TLS key, which the endpoint holds.
        f.debug_struct("Collector")
            .field("url", &self.url)
            .field("tls", &self.tls)
            .finish()
    }
}

/// PEM files given for TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Collector {
    /// Parses the URL and loads the TLS files. `https://` needs `tls.ca`
    /// and a CA needs `https://`: tonic would otherwise quietly talk
    /// plaintext to an `http://` URL configured for TLS.
    pub fn new(url: &str, tls: &TlsFiles) -> Result<Collector, ConfigError> {
        let bad = |reason: &str| ConfigError::CollectorUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host"))?
            .to_string();
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(bad("credentials do not belong in the URL"));
        }
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad("must start with http:// or https://")),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            return Err(ConfigError::HalfIdentity);
        }
        if tls.cert.is_some() && tls.ca.is_none() {
            return Err(ConfigError::IdentityWithoutCa);
        }
        match (https, tls.ca.is_some()) {
            (true, false) => return Err(bad("https:// needs --tls-ca")),
            (false, true) => return Err(bad("--tls-ca needs an https:// URL")),
            _ => {}
        }
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| bad(&e.to_string()))?
            .connect_timeout(Duration::from_secs(10))
            // A collector that vanished without closing the connection
            // (a host that died, a dropped route) is noticed within a
            // minute even when nothing is being sent.
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        if let Some(ca) = &tls.ca {
            // IP literals in URLs come bracketed; certificates name them bare.
            let domain = host.trim_start_matches('[').trim_end_matches(']');
            let mut config = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(read_pem("--tls-ca", ca)?))
                .domain_name(domain)
                .assume_http2(true);
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                config = config.identity(Identity::from_pem(
                    read_pem("--tls-cert", cert)?,
                    read_pem("--tls-key", key)?,
                ));
            }
            endpoint = endpoint
                .tls_config(config)
                .map_err(|e| ConfigError::Tls(error_chain(&e)))?;
        }
        Ok(Collector {
            url: url.to_string(),
            endpoint,
            tls: https,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn uses_tls(&self) -> bool {
        self.tls
    }
}

fn read_pem(flag: &'static str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::TlsFile {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ConfigError::NotPem {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(bytes)
}

pub use driftwatch_proto::text::error_chain;

/// Parses a duration such as `30s`, `5m`, `1h 30m` (humantime).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (try 30s, 5m or 1h)"))
}

/// Parses a byte count such as `65536`, `50M` (10^6) or `64MiB` (2^20).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text).map_err(|e| format!("{e} (try 1048576, 50M or 64MiB)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> TlsFiles {
        TlsFiles {
            ca: ca.map(Path::to_path_buf),
            cert: cert.map(Path::to_path_buf),
            key: key.map(Path::to_path_buf),
        }
    }

    #[test]
    fn urls_and_tls_files_must_agree() {
        let none = TlsFiles::default();
        assert!(Collector::new("http://127.0.0.1:7070", &none).is_ok());
        for bad in ["127.0.0.1:7070", "ftp://h", "http://", "http://user:pw@h:1"] {
            assert!(
                matches!(
                    Collector::new(bad, &none),
                    Err(ConfigError::CollectorUrl { .. })
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Collector::new("https://collector:7070", &none),
            Err(ConfigError::CollectorUrl { .. })
        ));
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("ca.pem");
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(matches!(
            Collector::new("http://collector:7070", &tls(Some(&pem), None, None)),
            Err(ConfigError::CollectorUrl { .. })
        ));
        assert!(matches!(
            Collector::new("https://collector:7070", &tls(Some(&pem), Some(&pem), None)),
            Err(ConfigError::HalfIdentity)
        ));
        assert!(matches!(
            Collector::new("https://collector:7070", &tls(None, Some(&pem), Some(&pem))),
            Err(ConfigError::IdentityWithoutCa)
        ));
        assert!(matches!(
            Collector::new(
                "https://collector:7070",
                &tls(Some(&dir.path().join("missing.pem")), None, None)
            ),
            Err(ConfigError::TlsFile { .. })
        ));
        let not_pem = dir.path().join("key.der");
        std::fs::write(&not_pem, [0x30, 0x82]).unwrap();
        assert!(matches!(
            Collector::new("https://collector:7070", &tls(Some(&not_pem), None, None)),
            Err(ConfigError::NotPem { .. })
        ));
    }

    #[test]
    fn durations_and_sizes_read_like_people_write_them() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert!(parse_duration("soon").is_err());
        assert_eq!(parse_bytes("65536"), Ok(65536));
        assert_eq!(parse_bytes("50M"), Ok(50_000_000));
        assert_eq!(parse_bytes("64MiB"), Ok(64 * 1024 * 1024));
        assert!(parse_bytes("lots").is_err());
    }
}
