//! Security alerting: one alert for every new deviation, graded by severity
//! rules and delivered through sinks (signed webhooks, syslog).
//!
//! # Layout
//! - [`rules`]: severity rules (`[[alerts.rules]]` plus built-in defaults).
//! - [`event`]: the alert's JSON body, built once per new deviation.
//! - [`webhook`]: HTTP(S) POST with an HMAC-SHA256 signature.
//! - [`syslog`]: RFC 5424 over UDP or TCP (RFC 6587 octet counting).
//! - [`backoff`]: when to retry a failed delivery, and when to give up.
//!
//! This module touches no storage: the outbox below lives in the store, and
//! the dispatcher that drains it uses [`Sink::deliver`], [`backoff`] and
//! the [`DeliveryError`] kinds.
//!
//! # Configuration
//!
//! The `[alerts]` section of the collector's config file, validated
//! strictly (unknown keys are errors) and completely, secret files
//! included, before anything starts:
//!
//! ```toml
//! [alerts]
//! default_rules = true                  # false drops the built-in rules
//!
//! [[alerts.rules]]                      # first match wins; before the defaults
//! paths = ["opt/app/bin"]               # globs, prefix semantics (optional)
//! kinds = ["added", "modified"]         # optional
//! severity = "high"                     # high, medium, low
//!
//! [[alerts.webhooks]]
//! name = "soc"                          # unique among all sinks; [A-Za-z0-9_.-]
//! url = "https://soc.example.net/hooks/driftwatch"
//! secret_file = "/etc/driftwatch/webhook.secret"  # HMAC key; not world-readable
//! ca_file = "/etc/driftwatch/soc-ca.pem"          # optional, added to the webpki roots
//! timeout = "10s"                       # optional, default 10s
//! min_severity = "medium"               # optional, default low (everything)
//!
//! [[alerts.syslog]]
//! name = "siem"
//! url = "tcp://siem.example.net:514"    # or udp://host:port (port defaults to 514)
//! facility = "auth"                     # optional, default auth; kern..local7
//! hostname = "collector-1"              # optional, default this machine's name
//! timeout = "10s"                       # optional: TCP connect and write
//! min_severity = "low"                  # optional
//! ```
//!
//! Relative `secret_file` and `ca_file` paths are relative to the
//! collector's working directory; use absolute paths.
//!
//! # The outbox contract (implemented by the store and the dispatcher)
//!
//! - **Written with the deviation.** When a report makes a deviation *new*
//!   for a host, the same transaction that stores it inserts one outbox row
//!   per sink that [accepts](Sink::accepts) its severity, each holding the
//!   same alert id and the same [`event::alert_body`]. A report that is
//!   rolled back leaves no alert; a committed one always has its alerts. A
//!   report replayed by an agent (already applied) creates none, and a
//!   deviation that was already open is not new.
//! - **Delivered at least once per sink.** The dispatcher takes due rows,
//!   calls [`Sink::deliver`] with the stored body and id, and then, in a
//!   committed transaction, either marks the row delivered (`Ok`),
//!   dead-letters it ([`DeliveryError::Permanent`], or
//!   [`backoff::exhausted`]), or counts the failure and schedules the next
//!   attempt after [`backoff::retry_delay`]. A row marked delivered is never
//!   sent again, and one sink's failures never delay another's rows.
//! - **Duplicates are possible, and bounded.** If the collector stops
//!   between a sink accepting an alert (a webhook's 2xx, a syslog write)
//!   and the commit that marks the row delivered, the row is still due
//!   after a restart and is sent again: at most once more per such crash
//!   or timed-out-but-delivered request. Receivers deduplicate on the alert
//!   id (`X-Driftwatch-Alert-Id`, the body's `id`, syslog's `id`).
//! - **What "delivered" means per sink.** A webhook is delivered when the
//!   receiver answered 2xx. Syslog has no acknowledgement: UDP is delivered
//!   when the datagram was handed to the kernel (it can be lost on the way
//!   without anyone knowing), TCP when the frame was written to a
//!   connection the peer had not closed; a connection that breaks right
//!   after a write can still lose that message. Use a webhook where loss
//!   matters.

pub mod backoff;
pub mod event;
pub mod rules;
pub mod syslog;
pub mod webhook;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use event::{AlertEvent, HostFields, alert_body, alert_event};
pub use rules::{Kind, RuleConfig, Rules, RulesError, Severity};
pub use syslog::SyslogSink;
pub use webhook::{Secret, WebhookSink, verify_signature};

/// The `[alerts]` section as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// Whether the built-in rules follow the user's (default true).
    #[serde(default = "default_true")]
    pub default_rules: bool,
    #[serde(default)]
    pub webhooks: Vec<WebhookConfig>,
    #[serde(default)]
    pub syslog: Vec<SyslogConfig>,
}

impl Default for AlertsConfig {
    fn default() -> AlertsConfig {
        AlertsConfig {
            rules: Vec::new(),
            default_rules: true,
            webhooks: Vec::new(),
            syslog: Vec::new(),
        }
    }
}

fn default_true() -> bool {
    true
}

/// One `[[alerts.webhooks]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub name: String,
    /// `http://` or `https://`.
    pub url: String,
    /// The HMAC-SHA256 key; trailing whitespace (a final newline) is
    /// ignored.
    pub secret_file: PathBuf,
    /// Extra CA certificates (PEM) trusted besides the webpki roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Per attempt, connect to response headers (default `10s`).
    #[serde(default)]
    pub timeout: Option<String>,
    /// Alerts below this severity are not sent here (default `low`).
    #[serde(default)]
    pub min_severity: Option<Severity>,
}

/// One `[[alerts.syslog]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogConfig {
    pub name: String,
    /// `udp://host:port` or `tcp://host:port`.
    pub url: String,
    /// `kern`, `user`, `mail`, `daemon`, `auth` (default), `syslog`, `lpr`,
    /// `news`, `uucp`, `cron`, `authpriv`, `ftp`, `local0` … `local7`.
    #[serde(default)]
    pub facility: Option<String>,
    /// The HOSTNAME field (default: this machine's host name).
    #[serde(default)]
    pub hostname: Option<String>,
    /// TCP connect and write timeout (default `10s`).
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub min_severity: Option<Severity>,
}

/// Why the `[alerts]` section cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AlertsConfigError {
    #[error(transparent)]
    Rules(#[from] RulesError),
    #[error("alerts.{section}[{index}] ({name:?}): {message}")]
    Sink {
        section: &'static str,
        index: usize,
        name: String,
        message: String,
    },
}

/// The `[alerts]` section, ready to use.
#[derive(Debug)]
pub struct ValidatedAlerts {
    pub rules: Rules,
    pub sinks: Vec<Sink>,
    /// Things that work but should be fixed (a world-readable secret, an
    /// unencrypted webhook to another machine), for the caller to log.
    pub warnings: Vec<String>,
}

impl ValidatedAlerts {
    /// Whether any alert would be sent: without sinks no outbox rows are
    /// needed.
    pub fn enabled(&self) -> bool {
        !self.sinks.is_empty()
    }

    pub fn sink(&self, name: &str) -> Option<&Sink> {
        self.sinks.iter().find(|s| s.name() == name)
    }
}

/// The longest sink name.
pub const MAX_SINK_NAME: usize = 64;

/// The default per-attempt timeout of every sink.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest timeout accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

impl AlertsConfig {
    /// Compiles the rules, checks every sink's URL and options, reads the
    /// secret and CA files, and builds the sinks. Needs no runtime and
    /// opens no connection.
    pub fn validate(&self) -> Result<ValidatedAlerts, AlertsConfigError> {
        let rules = Rules::new(&self.rules, self.default_rules)?;
        let mut sinks = Vec::new();
        let mut warnings = Vec::new();
        let mut names = HashSet::new();
        for (index, config) in self.webhooks.iter().enumerate() {
            let error = |message: String| AlertsConfigError::Sink {
                section: "webhooks",
                index,
                name: config.name.clone(),
                message,
            };
            check_name(&config.name, &mut names).map_err(error)?;
            let timeout = parse_timeout(config.timeout.as_deref()).map_err(error)?;
            let (secret, warning) = Secret::from_file(&config.secret_file).map_err(error)?;
            if let Some(w) = warning {
                warnings.push(format!("alerts.webhooks[{index}] ({:?}): {w}", config.name));
            }
            let ca =
                match &config.ca_file {
                    None => None,
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        error(format!("cannot read ca_file {}: {e}", path.display()))
                    })?),
                };
            let sink = WebhookSink::new(
                &config.name,
                &config.url,
                secret,
                ca.as_deref(),
                timeout,
                config.min_severity.unwrap_or(Severity::Low),
            )
            .map_err(error)?;
            if let Some(w) = sink.plaintext_warning() {
                warnings.push(format!("alerts.webhooks[{index}] ({:?}): {w}", config.name));
            }
            sinks.push(Sink::Webhook(Box::new(sink)));
        }
        for (index, config) in self.syslog.iter().enumerate() {
            let error = |message: String| AlertsConfigError::Sink {
                section: "syslog",
                index,
                name: config.name.clone(),
                message,
            };
            check_name(&config.name, &mut names).map_err(error)?;
            let timeout = parse_timeout(config.timeout.as_deref()).map_err(error)?;
            let sink = SyslogSink::new(
                &config.name,
                &config.url,
                config
                    .facility
                    .as_deref()
                    .unwrap_or(syslog::DEFAULT_FACILITY),
                config.hostname.as_deref(),
                timeout,
                config.min_severity.unwrap_or(Severity::Low),
            )
            .map_err(error)?;
            sinks.push(Sink::Syslog(sink));
        }
        Ok(ValidatedAlerts {
            rules,
            sinks,
            warnings,
        })
    }
}

fn check_name(name: &str, seen: &mut HashSet<String>) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_SINK_NAME {
        return Err(format!("name must be 1 to {MAX_SINK_NAME} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err("name may only use letters, digits, '_', '.' and '-'".into());
    }
    if !seen.insert(name.to_string()) {
        return Err(format!(
            "another sink is already called {name:?}; names key the outbox and must be unique"
        ));
    }
    Ok(())
}

fn parse_timeout(text: Option<&str>) -> Result<Duration, String> {
    let Some(text) = text else {
        return Ok(DEFAULT_TIMEOUT);
    };
    let timeout = humantime::parse_duration(text)
        .map_err(|e| format!("timeout: {text:?} is not a duration ({e})"))?;
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(format!(
            "timeout: {text:?} must be more than 0 and at most {}",
            humantime::format_duration(MAX_TIMEOUT)
        ));
    }
    Ok(timeout)
}

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeliveryError {
    /// Trying again cannot help (the receiver refused the alert: a 4xx
    /// other than 408 and 429; an unusable body): dead-letter it.
    #[error("{0}")]
    Permanent(String),
    /// Network errors, timeouts, 5xx, 408, 429, anything unexpected: try
    /// again after [`backoff::retry_delay`].
    #[error("{0}")]
    Retryable(String),
}

impl DeliveryError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, DeliveryError::Permanent(_))
    }

    pub fn message(&self) -> &str {
        match self {
            DeliveryError::Permanent(m) | DeliveryError::Retryable(m) => m,
        }
    }
}

/// Where alerts go.
#[derive(Debug)]
pub enum Sink {
    /// Boxed: the HTTP client is much larger than a syslog sink.
    Webhook(Box<WebhookSink>),
    Syslog(SyslogSink),
}

impl Sink {
    /// The configured name, unique among the sinks: the outbox's key.
    pub fn name(&self) -> &str {
        match self {
            Sink::Webhook(s) => s.name(),
            Sink::Syslog(s) => s.name(),
        }
    }

    /// Alerts below this severity are not meant for this sink.
    pub fn min_severity(&self) -> Severity {
        match self {
            Sink::Webhook(s) => s.min_severity(),
            Sink::Syslog(s) => s.min_severity(),
        }
    }

    /// Whether an alert of this severity goes to this sink.
    pub fn accepts(&self, severity: Severity) -> bool {
        severity >= self.min_severity()
    }

    /// One delivery attempt of a stored alert body (see [`event`]),
    /// bounded by the sink's timeout.
    pub async fn deliver(&self, body: &[u8], alert_id: &str) -> Result<(), DeliveryError> {
        match self {
            Sink::Webhook(s) => s.deliver(body, alert_id).await,
            Sink::Syslog(s) => s.deliver(body, alert_id).await,
        }
    }
}

/// The explicit port of a sink URL, checked: 1 to 65535 (the URL parser
/// accepts any digits, and an empty port).
fn url_port(url: &str, authority: &hyper::http::uri::Authority) -> Result<Option<u16>, String> {
    let text = authority.as_str();
    let after_host = match text.rfind(']') {
        Some(end) => &text[end + 1..],
        None => text,
    };
    let Some((_, port)) = after_host.rsplit_once(':') else {
        return Ok(None);
    };
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(Some(port)),
        _ => Err(format!("url: {url:?}: {port:?} is not a port (1 to 65535)")),
    }
}

/// This machine's host name (`/proc/sys/kernel/hostname`), or empty when
/// it cannot be read: the alert's `collector` and syslog's default
/// HOSTNAME.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    use driftwatch_proto::pb::v1::{Attrs, Deviation, deviation::Subject};

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        alerts: AlertsConfig,
    }

    fn parse(text: &str) -> Result<AlertsConfig, String> {
        toml::from_str::<File>(text)
            .map(|f| f.alerts)
            .map_err(|e| e.to_string())
    }

    fn secret_file(dir: &tempfile::TempDir, name: &str, text: &str, mode: u32) -> String {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path.display().to_string()
    }

    #[test]
    fn a_full_section_validates_into_rules_and_sinks() {
        let dir = tempfile::tempdir().unwrap();
        let secret = secret_file(&dir, "s", "hunter2\n", 0o600);
        let text = format!(
            r#"
            [alerts]
            default_rules = true

            [[alerts.rules]]
            paths = ["opt/app/bin"]
            kinds = ["added", "modified"]
            severity = "high"

            [[alerts.webhooks]]
            name = "soc"
            url = "https://soc.example.net/hooks/driftwatch?token=abc"
            secret_file = "{secret}"
            timeout = "3s"
            min_severity = "medium"

            [[alerts.webhooks]]
            name = "local-hook"
            url = "http://127.0.0.1:9000/"
            secret_file = "{secret}"

            [[alerts.syslog]]
            name = "siem"
            url = "tcp://siem.example.net:6514"
            facility = "local3"
            hostname = "collector-1"

            [[alerts.syslog]]
            name = "local.syslog"
            url = "udp://127.0.0.1"
            "#
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.rules.len(), 1);
        let alerts = config.validate().unwrap();
        assert!(alerts.enabled());
        assert!(alerts.warnings.is_empty(), "{:?}", alerts.warnings);
        let names: Vec<&str> = alerts.sinks.iter().map(Sink::name).collect();
        assert_eq!(names, ["soc", "local-hook", "siem", "local.syslog"]);
        let soc = alerts.sink("soc").unwrap();
        assert!(!soc.accepts(Severity::Low) && soc.accepts(Severity::Medium));
        assert!(alerts.sink("siem").unwrap().accepts(Severity::Low));
        let shown = format!("{alerts:?}");
        assert!(!shown.contains("hunter2"), "the secret is never shown");
        assert!(!shown.contains("token=abc"), "nor the URL's query");
        let d = Deviation {
            kind: "added".into(),
            subject: Some(Subject::Path(b"opt/app/bin/x".to_vec())),
            expected: None,
            actual: Some(Attrs::default()),
        };
        assert_eq!(alerts.rules.classify(&d), Severity::High);
    }

    #[test]
    fn no_section_means_default_rules_and_no_sinks() {
        let config = parse("").unwrap();
        assert_eq!(config, AlertsConfig::default());
        let alerts = config.validate().unwrap();
        assert!(!alerts.enabled());
        let d = Deviation {
            kind: "package_added".into(),
            subject: None,
            expected: None,
            actual: None,
        };
        assert_eq!(alerts.rules.classify(&d), Severity::High);
        let alerts = parse("[alerts]\ndefault_rules = false")
            .unwrap()
            .validate()
            .unwrap();
        assert_eq!(alerts.rules.classify(&d), Severity::Low);
    }

    #[test]
    fn bad_sinks_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let good = secret_file(&dir, "good", "k", 0o600);
        let empty = secret_file(&dir, "empty", " \n", 0o600);
        let missing = dir.path().join("missing").display().to_string();
        let not_pem = secret_file(&dir, "ca", "not a certificate", 0o644);
        let webhook = |extra: &str| {
            format!("[[alerts.webhooks]]\nname = \"w\"\nsecret_file = \"{good}\"\n{extra}")
        };
        let err = |text: &str| match parse(text) {
            Err(e) => e,
            Ok(c) => c.validate().unwrap_err().to_string(),
        };
        let cases = [
            (webhook("url = \"ftp://x/\""), "http:// or https://"),
            (webhook("url = \"https:///x\""), "URL"),
            (webhook("url = \"https://u:p@x/\""), "credentials"),
            (webhook("url = \"not a url\""), "URL"),
            (webhook("url = \"http://x:99999/\""), "not a port"),
            (
                webhook("url = \"http://x/\"\ntimeout = \"soon\""),
                "not a duration",
            ),
            (
                webhook("url = \"http://x/\"\ntimeout = \"0s\""),
                "more than 0",
            ),
            (webhook("url = \"http://x/\"\ntimeout = \"1h\""), "at most"),
            (
                webhook(&format!("url = \"http://x/\"\nca_file = \"{not_pem}\"")),
                "no PEM certificate",
            ),
            (
                webhook(&format!("url = \"http://x/\"\nca_file = \"{missing}\"")),
                "cannot read ca_file",
            ),
            (
                webhook("url = \"http://x/\"\nretries = 3"),
                "unknown field `retries`",
            ),
            (
                format!(
                    "[[alerts.webhooks]]\nname = \"w\"\nurl = \"http://x/\"\nsecret_file = \"{missing}\""
                ),
                "secret_file",
            ),
            (
                format!(
                    "[[alerts.webhooks]]\nname = \"w\"\nurl = \"http://x/\"\nsecret_file = \"{empty}\""
                ),
                "is empty",
            ),
            (
                format!(
                    "[[alerts.webhooks]]\nname = \"bad name\"\nurl = \"http://x/\"\nsecret_file = \"{good}\""
                ),
                "name may only use",
            ),
            (
                format!(
                    "{}\n[[alerts.syslog]]\nname = \"w\"\nurl = \"udp://x:514\"",
                    webhook("url = \"http://x/\"")
                ),
                "already called \"w\"",
            ),
            (
                "[[alerts.syslog]]\nname = \"s\"\nurl = \"udp://x:514\"\nfacility = \"local9\""
                    .into(),
                "unknown facility",
            ),
            (
                "[[alerts.syslog]]\nname = \"s\"\nurl = \"http://x:514\"".into(),
                "udp:// or tcp://",
            ),
            (
                "[[alerts.syslog]]\nname = \"s\"\nurl = \"tcp://x:514/path\"".into(),
                "no path",
            ),
            (
                "[[alerts.syslog]]\nname = \"s\"\nurl = \"tcp://x:0\"".into(),
                "port",
            ),
            (
                "[[alerts.syslog]]\nname = \"s\"\nurl = \"tcp://x\"\nhostname = \"a b\"".into(),
                "hostname",
            ),
            ("[alerts]\nsinks = []".into(), "unknown field `sinks`"),
        ];
        for (text, expected) in cases {
            let e = err(&text);
            assert!(
                e.contains(expected),
                "{text}\n=> {e}\n(wanted {expected:?})"
            );
        }
        // The message names the section, index and sink.
        let e = err(&webhook("url = \"ftp://x/\""));
        assert!(e.starts_with("alerts.webhooks[0] (\"w\"): "), "{e}");
        // Secret errors name the file, never its contents.
        assert!(!err(&webhook("url = \"ftp://x/\"")).contains("k\""));
    }

    #[test]
    fn warnings_for_world_readable_secrets_and_plaintext_webhooks() {
        let dir = tempfile::tempdir().unwrap();
        let open = secret_file(&dir, "open", "k", 0o644);
        let text = format!(
            "[[alerts.webhooks]]\nname = \"w\"\nurl = \"http://hooks.example.net/x\"\nsecret_file = \"{open}\""
        );
        let alerts = parse(&text).unwrap().validate().unwrap();
        assert_eq!(alerts.warnings.len(), 2, "{:?}", alerts.warnings);
        assert!(alerts.warnings[0].contains("readable by every user"));
        assert!(alerts.warnings[1].contains("unencrypted"));
    }

    #[tokio::test]
    async fn a_sink_delivers_a_stored_body_end_to_end() {
        let receiver = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = receiver.local_addr().unwrap().port();
        let text = format!(
            "[[alerts.syslog]]\nname = \"s\"\nurl = \"udp://127.0.0.1:{port}\"\nhostname = \"c1\""
        );
        let alerts = parse(&text).unwrap().validate().unwrap();
        let d = Deviation {
            kind: "added".into(),
            subject: Some(Subject::Path(b"usr/bin/nc".to_vec())),
            expected: None,
            actual: Some(Attrs::default()),
        };
        let severity = alerts.rules.classify(&d);
        let host = HostFields {
            host_id: "web-01",
            hostname: "web-01",
            image_id: "web",
            image_version: "1",
        };
        let body = alert_body("17", &host, &d, severity, 1_700_000_000, "c1");
        alerts.sinks[0].deliver(&body, "17").await.unwrap();
        let mut buf = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), receiver.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let line = String::from_utf8(buf[..n].to_vec()).unwrap();
        assert!(line.starts_with("<34>1 "), "{line}");
        assert!(line.ends_with("web-01: added usr/bin/nc (high)"), "{line}");
        assert!(line.contains("id=\"17\""), "{line}");
        let e = alerts.sinks[0]
            .deliver(b"not json", "18")
            .await
            .unwrap_err();
        assert!(e.is_permanent(), "{e}");
    }
}
