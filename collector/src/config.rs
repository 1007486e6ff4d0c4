//! The collector's configuration file: the replacement policy and the
//! limits applied to what agents send.
//!
//! TOML, validated strictly (unknown keys are an error) and completely
//! before any port is bound, so a typo never starts a collector that
//! silently ignores part of its policy:
//!
//! ```toml
//! [replacement]
//! max_drift_pct = 1.0          # flag a host whose drift exceeds this
//! max_instance_age = "30d"     # since the instance first came up
//! max_image_age = "90d"        # since the image was built
//! silence_timeout = "15m"      # no report or heartbeat for this long
//! superseded_grace = "24h"     # after a newer image of the family is registered
//! critical_paths = ["usr/bin", "etc/sudoers*"]  # replaces the defaults
//! extra_critical_paths = ["opt/app/bin"]        # adds to them
//!
//! [limits]
//! max_message_bytes = 4194304
//! max_changes_per_report = 10000
//!
//! [queue]                      # the disruption budget for schedulers
//! max_draining = 5             # hosts draining at once, fleet-wide
//! max_draining_pct = 10        # per image family
//!
//! [access]                     # applies when clients present certificates
//! fleet_clients = ["ops", "image-pipeline"]   # may use the fleet service
//! agent_host_id_from_certificate = true       # host_id must be a cert name
//! ```
//!
//! A duration of `"0"` or `"off"` disables that age or silence check.

use std::path::Path;
use std::time::Duration;

use driftwatch_proto::patterns::PathPatterns;
use serde::Deserialize;

use crate::access::Access;
use crate::alerts::rules::{DEFAULT_EXECUTABLE_PATHS, DEFAULT_SECURITY_PATHS};

/// The default critical paths: where commands run from
/// ([`DEFAULT_EXECUTABLE_PATHS`]) and the security configuration the alert
/// rules also treat as high ([`DEFAULT_SECURITY_PATHS`]: accounts, sudo,
/// ssh, PAM, the loader, cron, systemd units). A deviation there, or any
/// setuid, setgid or capability gain anywhere, flags a host at once until
/// it is retired: the places an intruder persists or escalates.
pub fn default_critical_paths() -> Vec<String> {
    DEFAULT_EXECUTABLE_PATHS
        .iter()
        .chain(DEFAULT_SECURITY_PATHS)
        .map(|s| s.to_string())
        .collect()
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config: {0}")]
    Invalid(String),
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub replacement: ReplacementPolicy,
    pub limits: Limits,
    pub access: Access,
    pub queue: QueueBudget,
    /// Severity rules and sinks (secrets read, URLs checked).
    pub alerts: std::sync::Arc<crate::alerts::ValidatedAlerts>,
}

/// The disruption budget: how many hosts may be draining at once.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueBudget {
    /// Across the fleet.
    pub max_draining: Option<u64>,
    /// Per image family (image id), as a percentage of its active hosts;
    /// a family may always drain at least one.
    pub max_draining_pct: Option<f64>,
}

/// When a host should be replaced.
#[derive(Debug, Clone)]
pub struct ReplacementPolicy {
    /// Percent, as `drift_pct`.
    pub max_drift_pct: f64,
    pub max_instance_age: Option<Duration>,
    pub max_image_age: Option<Duration>,
    pub silence_timeout: Option<Duration>,
    pub critical_paths: PathPatterns,
    /// How long hosts may stay on an image after a newer version of its
    /// family is registered.
    pub superseded_grace: Duration,
    /// The patterns as written, for display.
    pub critical_path_patterns: Vec<String>,
}

/// Bounds on what one agent may send.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_changes_per_report: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_message_bytes: 4 * 1024 * 1024,
            max_changes_per_report: 10_000,
        }
    }
}

impl Default for Config {
    fn default() -> Config {
        Config::from_file(FileConfig::default()).expect("the built-in defaults are valid")
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    replacement: FileReplacement,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    access: FileAccess,
    #[serde(default)]
    queue: FileQueue,
    #[serde(default)]
    alerts: crate::alerts::AlertsConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQueue {
    max_draining: Option<u64>,
    max_draining_pct: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccess {
    #[serde(default)]
    fleet_clients: Vec<String>,
    agent_host_id_from_certificate: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileReplacement {
    max_drift_pct: Option<f64>,
    max_instance_age: Option<String>,
    max_image_age: Option<String>,
    silence_timeout: Option<String>,
    critical_paths: Option<Vec<String>>,
    #[serde(default)]
    extra_critical_paths: Vec<String>,
    superseded_grace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_message_bytes: Option<usize>,
    max_changes_per_report: Option<usize>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } | ConfigError::Invalid(message) => {
                ConfigError::Parse {
                    path: path.display().to_string(),
                    message,
                }
            }
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: String::new(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Config::from_file(file)
    }

    fn from_file(file: FileConfig) -> Result<Config, ConfigError> {
        let r = file.replacement;
        let max_drift_pct = r.max_drift_pct.unwrap_or(1.0);
        if !(0.0..=100.0).contains(&max_drift_pct) {
            return Err(ConfigError::Invalid(format!(
                "replacement.max_drift_pct must be between 0 and 100, not {max_drift_pct}"
            )));
        }
        let mut patterns: Vec<String> = match r.critical_paths {
            Some(list) => list,
            None => default_critical_paths(),
        };
        patterns.extend(r.extra_critical_paths);
        let patterns = patterns
            .iter()
            .map(|p| {
                driftwatch_proto::patterns::normalise(p).map_err(|reason| {
                    ConfigError::Invalid(format!("replacement.critical_paths: {p:?} {reason}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let critical_paths = PathPatterns::new(&patterns)
            .map_err(|e| ConfigError::Invalid(format!("replacement.critical_paths: {e}")))?;
        let limits = Limits {
            max_message_bytes: file.limits.max_message_bytes.unwrap_or(4 * 1024 * 1024),
            max_changes_per_report: file.limits.max_changes_per_report.unwrap_or(10_000),
        };
        if !(1024..=256 * 1024 * 1024).contains(&limits.max_message_bytes) {
            return Err(ConfigError::Invalid(format!(
                "limits.max_message_bytes must be between 1 KiB and 256 MiB, not {}",
                limits.max_message_bytes
            )));
        }
        if limits.max_changes_per_report == 0 {
            return Err(ConfigError::Invalid(
                "limits.max_changes_per_report must be at least 1".into(),
            ));
        }
        Ok(Config {
            replacement: ReplacementPolicy {
                max_drift_pct,
                max_instance_age: duration(
                    "replacement.max_instance_age",
                    r.max_instance_age.as_deref(),
                    "30d",
                )?,
                max_image_age: duration(
                    "replacement.max_image_age",
                    r.max_image_age.as_deref(),
                    "90d",
                )?,
                silence_timeout: duration(
                    "replacement.silence_timeout",
                    r.silence_timeout.as_deref(),
                    "15m",
                )?,
                critical_paths,
                critical_path_patterns: patterns,
                superseded_grace: duration(
                    "replacement.superseded_grace",
                    r.superseded_grace.as_deref(),
                    "24h",
                )?
                .unwrap_or_default(),
            },
            limits,
            alerts: std::sync::Arc::new(
                file.alerts
                    .validate()
                    .map_err(|e| ConfigError::Invalid(e.to_string()))?,
            ),
            queue: {
                if file.queue.max_draining == Some(0) {
                    return Err(ConfigError::Invalid(
                        "queue.max_draining must be at least 1 (omit it for no fleet-wide limit)"
                            .into(),
                    ));
                }
                if let Some(pct) = file.queue.max_draining_pct
                    && !(pct > 0.0 && pct <= 100.0)
                {
                    return Err(ConfigError::Invalid(format!(
                        "queue.max_draining_pct must be above 0 and at most 100, not {pct}"
                    )));
                }
                QueueBudget {
                    max_draining: file.queue.max_draining,
                    max_draining_pct: file.queue.max_draining_pct,
                }
            },
            access: Access {
                fleet_clients: file.access.fleet_clients,
                agent_host_id_from_certificate: file
                    .access
                    .agent_host_id_from_certificate
                    .unwrap_or(true),
            },
        })
    }
}

/// `None` means the check is off.
fn duration(
    key: &str,
    value: Option<&str>,
    default: &str,
) -> Result<Option<Duration>, ConfigError> {
    let text = value.unwrap_or(default).trim();
    if text == "0" || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    humantime::parse_duration(text)
        .map(Some)
        .map_err(|e| ConfigError::Invalid(format!("{key}: {text:?} is not a duration ({e})")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_sensible() {
        let c = Config::default();
        assert_eq!(c.replacement.max_drift_pct, 1.0);
        assert_eq!(
            c.replacement.max_instance_age,
            Some(Duration::from_secs(30 * 86400))
        );
        assert!(c.replacement.critical_paths.matches(b"usr/bin/ls"));
        assert!(c.replacement.critical_paths.matches(b"etc/sudoers.d/x"));
        assert!(!c.replacement.critical_paths.matches(b"usr/share/doc/x"));
    }

    #[test]
    fn file_values_override_and_extend() {
        let c = Config::parse(
            r#"
            [replacement]
            max_drift_pct = 5
            silence_timeout = "off"
            max_image_age = "2h 30m"
            extra_critical_paths = ["opt/app/bin"]
            "#,
        )
        .unwrap();
        assert_eq!(c.replacement.max_drift_pct, 5.0);
        assert_eq!(c.replacement.silence_timeout, None);
        assert_eq!(c.replacement.max_image_age, Some(Duration::from_secs(9000)));
        assert!(c.replacement.critical_paths.matches(b"opt/app/bin/x"));
        assert!(c.replacement.critical_paths.matches(b"usr/bin/x"));
    }

    #[test]
    fn the_packaged_example_config_is_valid_and_matches_the_defaults() {
        let c = Config::parse(include_str!("../../packaging/collector/collector.toml")).unwrap();
        let d = Config::default();
        assert_eq!(c.replacement.max_drift_pct, d.replacement.max_drift_pct);
        assert_eq!(
            c.replacement.max_instance_age,
            d.replacement.max_instance_age
        );
        assert_eq!(c.replacement.silence_timeout, d.replacement.silence_timeout);
        assert_eq!(
            c.replacement.superseded_grace,
            d.replacement.superseded_grace
        );
        assert_eq!(c.limits.max_message_bytes, d.limits.max_message_bytes);
        assert_eq!(c.queue, d.queue);
        assert!(c.access.agent_host_id_from_certificate);
    }

    #[test]
    fn mistakes_are_clear_errors() {
        for (text, expect) in [
            ("[replacement]\nmax_drift = 3", "unknown field `max_drift`"),
            ("[replacement]\nmax_drift_pct = 300", "between 0 and 100"),
            (
                "[replacement]\nmax_instance_age = \"soon\"",
                "not a duration",
            ),
            (
                "[replacement]\ncritical_paths = [\"a/[b\"]",
                "critical_paths",
            ),
            ("[limits]\nmax_message_bytes = 10", "between 1 KiB"),
            ("[oops]", "unknown field `oops`"),
            ("not toml", "invalid"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }
}
