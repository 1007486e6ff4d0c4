//! The webhook sink: each alert is an HTTP POST of its JSON body, signed.
//!
//! Request headers:
//! - `Content-Type: application/json`
//! - `User-Agent: driftwatch-collector/<version>`
//! - `X-Driftwatch-Alert-Id: <id>`: the same on every attempt; receivers
//!   deduplicate on it (delivery is at least once).
//! - `X-Driftwatch-Timestamp: <unix seconds>`: when this attempt was made.
//! - `X-Driftwatch-Signature: sha256=<hex>`: HMAC-SHA256 keyed with the
//!   shared secret over `<timestamp>.<body>` (the timestamp header's value,
//!   a `.`, the body's bytes). Receivers check it with
//!   [`verify_signature`] (or any HMAC library, comparing in constant time)
//!   and should refuse timestamps more than a few minutes from their clock,
//!   so a captured request cannot be replayed later.
//!
//! Answers: 2xx is delivered (the body is not read); 408 and 429 and every
//! other status, connection errors and timeouts are retryable; any other
//! 4xx is a permanent failure (the receiver refused this alert, and would
//! again). Redirects are not followed.
//!
//! `https://` verifies the server's certificate against Mozilla's roots
//! (webpki-roots) plus the certificates of the optional `ca_file`; TLS 1.2
//! and 1.3 through rustls with the ring provider. The secret and the URL's
//! path and query (which some receivers use for tokens) are never logged
//! or shown by `Debug`: only the scheme, host and port are.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use driftwatch_proto::manifest::hex;
use driftwatch_proto::text::{error_chain, escape_bytes};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ring::hmac;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::{DeliveryError, Severity};

pub const USER_AGENT: &str = concat!("driftwatch-collector/", env!("CARGO_PKG_VERSION"));
pub const HEADER_ALERT_ID: &str = "x-driftwatch-alert-id";
pub const HEADER_TIMESTAMP: &str = "x-driftwatch-timestamp";
pub const HEADER_SIGNATURE: &str = "x-driftwatch-signature";

/// The largest secret file read.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// How much of a refusing receiver's answer is kept for the error.
const ERROR_BODY_BYTES: usize = 512;

/// The webhook's HMAC key. `Debug` never shows it.
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from bytes; empty is refused.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, String> {
        let bytes = bytes.into();
        if bytes.is_empty() {
            return Err("the secret is empty".into());
        }
        Ok(Secret(bytes))
    }

    /// Reads a secret file: a regular file of at most 64 KiB, trailing
    /// whitespace ignored, not empty. Also returns a warning when every
    /// user may read it (refused it is not: some secret stores mount files
    /// 0644 inside a private directory).
    pub fn from_file(path: &Path) -> Result<(Secret, Option<String>), String> {
        let shown = path.display();
        let meta =
            std::fs::metadata(path).map_err(|e| format!("cannot read secret_file {shown}: {e}"))?;
        if !meta.is_file() {
            return Err(format!("secret_file {shown} is not a regular file"));
        }
        if meta.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "secret_file {shown} is larger than {MAX_SECRET_BYTES} bytes"
            ));
        }
        let mut bytes =
            std::fs::read(path).map_err(|e| format!("cannot read secret_file {shown}: {e}"))?;
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        let secret = Secret::new(bytes).map_err(|_| format!("secret_file {shown} is empty"))?;
        let mode = meta.permissions().mode();
        let warning = (mode & 0o004 != 0).then(|| {
            format!(
                "secret_file {shown} is readable by every user (mode {:04o}); chmod o-r it",
                mode & 0o7777
            )
        });
        Ok((secret, warning))
    }

    fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: the
/// `X-Driftwatch-Signature` value.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.as_bytes());
    context.update(b".");
    context.update(body);
    format!("sha256={}", hex(context.sign().as_ref()))
}

/// Whether `header` (an `X-Driftwatch-Signature` value) is the signature
/// of `timestamp` and `body` under `secret`, compared in constant time.
/// Checking that the timestamp is recent is the caller's job.
pub fn verify_signature(secret: &[u8], timestamp: &str, body: &[u8], header: &str) -> bool {
    let Some(tag) = header.trim().strip_prefix("sha256=").and_then(decode_hex) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut message = Vec::with_capacity(timestamp.len() + 1 + body.len());
    message.extend_from_slice(timestamp.as_bytes());
    message.push(b'.');
    message.extend_from_slice(body);
    hmac::verify(&key, &message, &tag).is_ok()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    text.as_bytes()
        .chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// A configured webhook.
pub struct WebhookSink {
    name: String,
    url: Uri,
    /// Scheme, host and port only.
    shown_url: String,
    secret: Secret,
    timeout: Duration,
    min_severity: Severity,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            .field("url", &self.shown_url)
            .field("secret", &self.secret)
            .field("timeout", &self.timeout)
            .field("min_severity", &self.min_severity)
            .finish_non_exhaustive()
    }
}

impl WebhookSink {
    /// Checks the URL (`http://` or `https://`, a host, no credentials)
    /// and builds the client; `ca_pem` holds extra trusted CA
    /// certificates. Opens no connection and needs no runtime.
    pub fn new(
        name: &str,
        url: &str,
        secret: Secret,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
        min_severity: Severity,
    ) -> Result<WebhookSink, String> {
        let parsed: Uri = url
            .parse()
            .map_err(|e| format!("url: {url:?} is not a valid URL ({e})"))?;
        let scheme = parsed.scheme_str().unwrap_or_default();
        if scheme != "http" && scheme != "https" {
            return Err(format!("url: {url:?} must start with http:// or https://"));
        }
        let Some(authority) = parsed.authority() else {
            return Err(format!("url: {url:?} is not a valid URL (no host)"));
        };
        if authority.as_str().contains('@') {
            return Err(
                "url: credentials in the URL are not supported; the receiver checks the signature"
                    .into(),
            );
        }
        if authority.host().is_empty() {
            return Err(format!("url: {url:?} is not a valid URL (no host)"));
        }
        super::url_port(url, authority)?;
        let shown_url = format!("{scheme}://{authority}");
        let tls = tls_config(ca_pem)?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(timeout));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .build(https);
        Ok(WebhookSink {
            name: name.to_string(),
            url: parsed,
            shown_url,
            secret,
            timeout,
            min_severity,
            client,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn min_severity(&self) -> Severity {
        self.min_severity
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A warning when alerts would cross the network unencrypted (`http://`
    /// to anything but a loopback address or `localhost`).
    pub fn plaintext_warning(&self) -> Option<String> {
        if self.url.scheme_str() != Some("http") {
            return None;
        }
        let host = self.url.host().unwrap_or_default();
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host.eq_ignore_ascii_case("localhost")
            || bare
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        (!loopback).then(|| {
            format!(
                "{} sends alerts unencrypted (signed, but readable on the way); use https://",
                self.shown_url
            )
        })
    }

    /// One attempt: POST the body, signed, within the timeout.
    pub async fn deliver(&self, body: &[u8], alert_id: &str) -> Result<(), DeliveryError> {
        let timestamp = unix_now().to_string();
        let signature = sign(self.secret.expose(), &timestamp, body);
        let request = Request::post(self.url.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, USER_AGENT)
            .header(HEADER_ALERT_ID, alert_id)
            .header(HEADER_TIMESTAMP, &timestamp)
            .header(HEADER_SIGNATURE, signature)
            .body(Full::new(Bytes::copy_from_slice(body)))
            .map_err(|e| {
                DeliveryError::Permanent(format!(
                    "webhook {}: cannot build the request for alert {}: {e}",
                    self.name,
                    escape_bytes(alert_id.as_bytes())
                ))
            })?;
        match tokio::time::timeout(self.timeout, self.send(request)).await {
            Ok(result) => result,
            Err(_) => Err(DeliveryError::Retryable(format!(
                "webhook {}: no answer from {} within {}",
                self.name,
                self.shown_url,
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Result<(), DeliveryError> {
        let response = self.client.request(request).await.map_err(|e| {
            DeliveryError::Retryable(format!(
                "webhook {}: POST to {} failed: {}",
                self.name,
                self.shown_url,
                error_chain(&e)
            ))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let detail = tokio::time::timeout(Duration::from_secs(1), error_body(response.into_body()))
            .await
            .unwrap_or_default();
        let message = format!(
            "webhook {}: {} answered {status}{}",
            self.name,
            self.shown_url,
            if detail.is_empty() {
                String::new()
            } else {
                format!(": {detail}")
            }
        );
        if permanent(status) {
            Err(DeliveryError::Permanent(message))
        } else {
            Err(DeliveryError::Retryable(message))
        }
    }
}

/// A 4xx other than 408 (request timeout) and 429 (too many requests).
fn permanent(status: StatusCode) -> bool {
    status.is_client_error()
        && status != StatusCode::REQUEST_TIMEOUT
        && status != StatusCode::TOO_MANY_REQUESTS
}

/// The start of a refusing receiver's answer, escaped, for the error.
async fn error_body(mut body: Incoming) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < ERROR_BODY_BYTES {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    bytes.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    bytes.truncate(ERROR_BODY_BYTES);
    escape_bytes(bytes.trim_ascii())
}

fn tls_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("ca_file: unreadable PEM: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file: unusable CA certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("ca_file holds no PEM certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn unix_now() -> u64 {
    crate::time::now().max(0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::Instant;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    const SECRET: &[u8] = b"k3y";

    /// One request as a real HTTP/1.1 listener saw it.
    #[derive(Debug)]
    struct Received {
        request_line: String,
        headers: HashMap<String, String>,
        body: Vec<u8>,
    }

    /// Reads one HTTP/1.1 request (headers, then a Content-Length body).
    async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Received> {
        let mut data = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            data.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(data[..head_end].to_vec()).unwrap();
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap().to_string();
        let headers: HashMap<String, String> = lines
            .map(|l| {
                let (k, v) = l.split_once(':').unwrap();
                (k.trim().to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let length: usize = headers["content-length"].parse().unwrap();
        let mut body = data[head_end + 4..].to_vec();
        while body.len() < length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            body.extend_from_slice(&chunk[..n]);
        }
        Some(Received {
            request_line,
            headers,
            body,
        })
    }

    async fn respond<S: AsyncWrite + Unpin>(stream: &mut S, status: u16, body: &str) {
        let response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// A plain HTTP listener answering each connection's request with the
    /// next status in `statuses`, and passing every request on.
    async fn http_server(
        statuses: Vec<(u16, &'static str)>,
    ) -> (u16, mpsc::UnboundedReceiver<Received>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (status, body) in statuses {
                let (mut stream, _) = listener.accept().await.unwrap();
                if let Some(request) = read_request(&mut stream).await {
                    let _ = tx.send(request);
                }
                respond(&mut stream, status, body).await;
            }
        });
        (port, rx)
    }

    fn sink(url: &str, timeout: Duration) -> WebhookSink {
        WebhookSink::new(
            "test",
            url,
            Secret::new(SECRET).unwrap(),
            None,
            timeout,
            Severity::Low,
        )
        .unwrap()
    }

    const BODY: &[u8] = br#"{"version":1,"id":"42","event":"deviation.new"}"#;

    #[tokio::test]
    async fn posts_the_signed_body_with_every_header() {
        let (port, mut requests) = http_server(vec![(204, "")]).await;
        let hook = sink(
            &format!("http://127.0.0.1:{port}/hooks/dw?token=t"),
            Duration::from_secs(5),
        );
        hook.deliver(BODY, "42").await.unwrap();
        let r = requests.recv().await.unwrap();
        assert_eq!(r.request_line, "POST /hooks/dw?token=t HTTP/1.1");
        assert_eq!(r.body, BODY);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(
            r.headers["user-agent"],
            format!("driftwatch-collector/{}", env!("CARGO_PKG_VERSION"))
        );
        assert_eq!(r.headers["host"], format!("127.0.0.1:{port}"));
        assert_eq!(r.headers[HEADER_ALERT_ID], "42");
        let timestamp = &r.headers[HEADER_TIMESTAMP];
        let sent: u64 = timestamp.parse().unwrap();
        assert!(unix_now().abs_diff(sent) < 60);
        let signature = &r.headers[HEADER_SIGNATURE];
        assert!(signature.starts_with("sha256=") && signature.len() == 7 + 64);
        assert!(verify_signature(SECRET, timestamp, &r.body, signature));
        assert!(!verify_signature(b"other", timestamp, &r.body, signature));
        assert!(!verify_signature(SECRET, "0", &r.body, signature));
        assert!(!verify_signature(SECRET, timestamp, b"{}", signature));
        assert!(!verify_signature(
            SECRET,
            timestamp,
            &r.body,
            &signature[7..]
        ));
        assert!(!verify_signature(SECRET, timestamp, &r.body, "sha256=zz"));
    }

    #[test]
    fn the_signature_is_standard_hmac_sha256() {
        // printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 'k3y'
        let expected = "sha256=fd5a70e965043f7df6309c2c3b5ff5a8ffa99b1f5175e9a311459e73c4634d4a";
        assert_eq!(sign(SECRET, "1700000000", br#"{"a":1}"#), expected);
        assert!(verify_signature(
            SECRET,
            "1700000000",
            br#"{"a":1}"#,
            expected
        ));
        assert!(verify_signature(
            SECRET,
            "1700000000",
            br#"{"a":1}"#,
            &expected.to_uppercase().replace("SHA256=", "sha256=")
        ));
    }

    #[tokio::test]
    async fn a_500_is_retryable_and_the_retry_succeeds() {
        let (port, mut requests) =
            http_server(vec![(500, "database is down\n"), (200, "ok")]).await;
        let hook = sink(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5));
        let e = hook.deliver(BODY, "42").await.unwrap_err();
        assert!(!e.is_permanent(), "{e}");
        assert!(
            e.message().contains("500") && e.message().contains("database is down"),
            "{e}"
        );
        hook.deliver(BODY, "42").await.unwrap();
        let first = requests.recv().await.unwrap();
        let second = requests.recv().await.unwrap();
        assert_eq!(
            first.headers[HEADER_ALERT_ID],
            second.headers[HEADER_ALERT_ID]
        );
        assert_eq!(first.body, second.body);
    }

    #[tokio::test]
    async fn client_errors_are_permanent_except_408_and_429() {
        let (port, _requests) = http_server(vec![
            (400, "bad \u{1b}[31m json"),
            (404, ""),
            (408, ""),
            (429, ""),
            (301, ""),
            (503, ""),
        ])
        .await;
        let hook = sink(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5));
        let e = hook.deliver(BODY, "1").await.unwrap_err();
        assert!(e.is_permanent(), "{e}");
        assert!(
            e.message()
                .contains("400 Bad Request: bad \\u{1b}[31m json"),
            "{e}"
        );
        assert!(hook.deliver(BODY, "1").await.unwrap_err().is_permanent());
        for _ in 0..4 {
            let e = hook.deliver(BODY, "1").await.unwrap_err();
            assert!(!e.is_permanent(), "{e}");
        }
    }

    #[tokio::test]
    async fn a_receiver_that_never_answers_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let _ = read_request(&mut stream).await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(stream);
        });
        let hook = sink(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_millis(300),
        );
        let started = Instant::now();
        let e = hook.deliver(BODY, "1").await.unwrap_err();
        assert!(!e.is_permanent());
        assert!(
            e.message().contains("no answer") && e.message().contains("300ms"),
            "{e}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        held.abort();
    }

    #[tokio::test]
    async fn a_refused_connection_is_retryable() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let hook = sink(&format!("http://127.0.0.1:{port}/"), Duration::from_secs(5));
        let e = hook.deliver(BODY, "1").await.unwrap_err();
        assert!(!e.is_permanent());
        assert!(e.message().contains("refused"), "{e}");
    }

    /// A CA and a server certificate for 127.0.0.1 and localhost.
    fn test_pki() -> (String, rustls::ServerConfig) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "alerts test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        params.key_usages.push(KeyUsagePurpose::DigitalSignature);
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        (ca.pem(), server)
    }

    #[tokio::test]
    async fn https_verifies_the_server_against_the_extra_ca() {
        let (ca_pem, server) = test_pki();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, mut requests) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    continue; // the untrusting client hung up
                };
                if let Some(r) = read_request(&mut tls).await {
                    let _ = tx.send(r);
                }
                respond(&mut tls, 200, "").await;
            }
        });
        let url = format!("https://localhost:{port}/in");
        let trusting = WebhookSink::new(
            "tls",
            &url,
            Secret::new(SECRET).unwrap(),
            Some(ca_pem.as_bytes()),
            Duration::from_secs(5),
            Severity::Low,
        )
        .unwrap();
        trusting.deliver(BODY, "7").await.unwrap();
        let r = requests.recv().await.unwrap();
        assert_eq!(r.request_line, "POST /in HTTP/1.1");
        assert!(verify_signature(
            SECRET,
            &r.headers[HEADER_TIMESTAMP],
            &r.body,
            &r.headers[HEADER_SIGNATURE]
        ));
        let untrusting = sink(&url, Duration::from_secs(5));
        let e = untrusting.deliver(BODY, "7").await.unwrap_err();
        assert!(!e.is_permanent());
        assert!(e.message().to_lowercase().contains("certificate"), "{e}");
        assert!(
            requests.try_recv().is_err(),
            "nothing was sent without trust"
        );
    }

    #[test]
    fn debug_shows_neither_the_secret_nor_the_url_path() {
        let hook = sink(
            "https://h.example.net:8443/T0KEN?sig=abc",
            Duration::from_secs(1),
        );
        let shown = format!("{hook:?}");
        assert!(!shown.contains("k3y") && !shown.contains("T0KEN") && !shown.contains("abc"));
        assert!(shown.contains("https://h.example.net:8443"), "{shown}");
        assert_eq!(
            format!("{:?}", Secret::new("s3cr3t").unwrap()),
            "Secret(<redacted>)"
        );
        assert!(hook.plaintext_warning().is_none());
        assert!(
            sink("http://[::1]:80/", Duration::from_secs(1))
                .plaintext_warning()
                .is_none()
        );
        assert!(
            sink("http://localhost/", Duration::from_secs(1))
                .plaintext_warning()
                .is_none()
        );
        assert!(
            sink("http://10.0.0.1/", Duration::from_secs(1))
                .plaintext_warning()
                .is_some()
        );
    }

    #[test]
    fn secret_files_are_trimmed_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "abc \r\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let (secret, warning) = Secret::from_file(&path).unwrap();
        assert_eq!(secret.expose(), b"abc");
        assert!(warning.is_none());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o604)).unwrap();
        assert!(
            Secret::from_file(&path)
                .unwrap()
                .1
                .unwrap()
                .contains("0604")
        );
        assert!(
            Secret::from_file(dir.path())
                .unwrap_err()
                .contains("not a regular file")
        );
        std::fs::write(&path, vec![b'a'; 70_000]).unwrap();
        assert!(Secret::from_file(&path).unwrap_err().contains("larger"));
        assert!(Secret::new("").is_err());
    }
}
