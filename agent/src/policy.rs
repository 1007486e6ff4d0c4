//! The policy: which paths are never walked, and which are runtime zones.
//!
//! A policy file is TOML, validated strictly (unknown keys are an error):
//!
//! ```toml
//! # Add to the built-in lists (set to false to replace them instead).
//! default_excludes = true
//! default_runtime_zones = true
//! exclude = ["opt/scratch"]
//! runtime_zones = ["etc/myapp/secrets", "srv/data"]
//! ```
//!
//! Patterns mean what they mean everywhere in driftwatch
//! ([`driftwatch_proto::patterns`]): globs over paths relative to the root
//! (`*` stays within one path component, `**` crosses them) that match a
//! path or any of its ancestors, so `var/log` covers everything below
//! `var/log`. A leading `/` is accepted and ignored.
//!
//! - *Excluded* paths are not walked at all: pseudo file systems and caches
//!   whose churn says nothing about the image. They are listed in every
//!   report so the gap in coverage is never silent.
//! - *Runtime zones* are walked and compared, but their changes are expected
//!   (secrets, host identity, data volumes): they are reported apart from
//!   drift and do not count towards `drift_pct`.

use std::path::Path;

use driftwatch_proto::PolicySpec;
use driftwatch_proto::patterns::{self, PathPatterns};
use serde::Deserialize;

/// Pseudo file systems, scratch space and caches: never part of an image's
/// meaning, and some (proc, sys) are not even files.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "proc",
    "sys",
    "dev",
    "run",
    "tmp",
    "var/tmp",
    "var/cache",
    "var/log",
    "var/run",
    "var/lock",
    "var/lib/docker",
    "var/lib/containerd",
    "lost+found",
];

/// Written by the platform when an instance boots or runs: host identity,
/// network configuration, cloud-init state, leases and timers.
pub const DEFAULT_RUNTIME_ZONES: &[&str] = &[
    "etc/hostname",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/machine-id",
    "etc/mtab",
    "etc/ssh/ssh_host_*",
    // cloud-init's per-instance state, but not var/lib/cloud/scripts, whose
    // per-boot scripts run as root at every boot.
    "var/lib/cloud/data",
    "var/lib/cloud/instance",
    "var/lib/cloud/instances",
    "var/lib/cloud/sem",
    "var/lib/dhcp",
    "var/lib/systemd",
    "var/lib/logrotate",
    // Mail queues, but not var/spool/cron or var/spool/at: a crontab
    // dropped on a host is exactly the persistence drift must show.
    "var/spool/postfix",
    "var/spool/exim4",
    // driftwatch's own state: the manifest and the agent's spool.
    "var/lib/driftwatch",
];

/// Why a policy could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid policy file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid {list} pattern {pattern:?}: {reason}")]
    Pattern {
        list: &'static str,
        pattern: String,
        reason: String,
    },
}

/// The policy file as written by a user.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default = "yes")]
    default_excludes: bool,
    #[serde(default = "yes")]
    default_runtime_zones: bool,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    runtime_zones: Vec<String>,
}

fn yes() -> bool {
    true
}

/// A validated policy, ready to match paths.
#[derive(Debug, Clone)]
pub struct Policy {
    spec: PolicySpec,
    exclude: PathPatterns,
    runtime_zones: PathPatterns,
}

impl Policy {
    /// The built-in policy, used when no file is given.
    pub fn builtin() -> Policy {
        Policy::from_spec(PolicySpec {
            exclude: DEFAULT_EXCLUDES.iter().map(|s| s.to_string()).collect(),
            runtime_zones: DEFAULT_RUNTIME_ZONES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        })
        .expect("built-in patterns are valid")
    }

    /// Reads and validates a policy file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Policy::parse(&text).map_err(|e| match e {
            PolicyError::Parse { message, .. } => PolicyError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates policy TOML.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
            path: "<inline>".into(),
            message: e.to_string(),
        })?;
        let mut exclude: Vec<String> = Vec::new();
        if file.default_excludes {
            exclude.extend(DEFAULT_EXCLUDES.iter().map(|s| s.to_string()));
        }
        exclude.extend(file.exclude);
        let mut runtime_zones: Vec<String> = Vec::new();
        if file.default_runtime_zones {
            runtime_zones.extend(DEFAULT_RUNTIME_ZONES.iter().map(|s| s.to_string()));
        }
        runtime_zones.extend(file.runtime_zones);
        Policy::from_spec(PolicySpec {
            exclude,
            runtime_zones,
        })
    }

    /// Builds a policy from recorded patterns (as stored in a manifest),
    /// validating and normalising each one.
    pub fn from_spec(spec: PolicySpec) -> Result<Policy, PolicyError> {
        let exclude = normalise("exclude", spec.exclude)?;
        let runtime_zones = normalise("runtime_zones", spec.runtime_zones)?;
        Ok(Policy {
            exclude: build_set("exclude", &exclude)?,
            runtime_zones: build_set("runtime_zones", &runtime_zones)?,
            spec: PolicySpec {
                exclude,
                runtime_zones,
            },
        })
    }

    /// The patterns, normalised, as recorded in a manifest.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// Whether a path (relative, '/'-separated) is excluded from the walk.
    pub fn is_excluded(&self, path: &[u8]) -> bool {
        self.exclude.matches(path)
    }

    /// Whether the walk skips this entry, given that its ancestors were
    /// already walked (so only the path itself needs matching).
    pub fn excludes_entry(&self, path: &[u8]) -> bool {
        self.exclude.matches_exactly(path)
    }

    /// Whether a path lies in a runtime zone.
    pub fn in_runtime_zone(&self, path: &[u8]) -> bool {
        self.runtime_zones.matches(path)
    }
}

/// Normalises each pattern (see [`patterns::normalise`]) and drops
/// duplicates.
fn normalise(list: &'static str, patterns: Vec<String>) -> Result<Vec<String>, PolicyError> {
    let mut out: Vec<String> = Vec::with_capacity(patterns.len());
    for pattern in patterns {
        let trimmed = patterns::normalise(&pattern).map_err(|reason| PolicyError::Pattern {
            list,
            pattern: pattern.clone(),
            reason: match reason {
                "matches the whole root" => {
                    "matches the whole root; that would verify nothing".to_string()
                }
                other => other.to_string(),
            },
        })?;
        if !out.contains(&trimmed) {
            out.push(trimmed);
        }
    }
    Ok(out)
}

fn build_set(list: &'static str, patterns: &[String]) -> Result<PathPatterns, PolicyError> {
    PathPatterns::new(patterns).map_err(|e| PolicyError::Pattern {
        list,
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_excludes_pseudo_filesystems_and_their_contents() {
        let p = Policy::builtin();
        assert!(p.is_excluded(b"proc"));
        assert!(p.is_excluded(b"proc/1/status"));
        assert!(p.is_excluded(b"var/log/syslog"));
        assert!(!p.is_excluded(b"processes"));
        assert!(!p.is_excluded(b"var/lib/dpkg/status"));
        assert!(!p.is_excluded(b""));
    }

    #[test]
    fn runtime_zones_match_globs_and_subtrees() {
        let p = Policy::builtin();
        assert!(p.in_runtime_zone(b"etc/ssh/ssh_host_ed25519_key"));
        assert!(!p.in_runtime_zone(b"etc/ssh/sshd_config"));
        assert!(p.in_runtime_zone(b"var/lib/cloud/instance/boot-finished"));
        // Persistence spots stay drift.
        assert!(!p.in_runtime_zone(b"var/spool/cron/crontabs/root"));
        assert!(!p.in_runtime_zone(b"var/lib/cloud/scripts/per-boot/x.sh"));
        assert!(p.in_runtime_zone(b"etc/hostname"));
    }

    #[test]
    fn file_adds_to_defaults_or_replaces_them() {
        let p = Policy::parse("exclude = [\"/opt/scratch/\"]\nruntime_zones = [\"srv/*/data\"]")
            .unwrap();
        assert!(p.is_excluded(b"opt/scratch/x"));
        assert!(p.is_excluded(b"proc"));
        assert!(p.in_runtime_zone(b"srv/app/data/db"));
        assert!(!p.in_runtime_zone(b"srv/app/config"));
        assert_eq!(p.spec().exclude.last().unwrap(), "opt/scratch");

        let p = Policy::parse("default_excludes = false\ndefault_runtime_zones = false").unwrap();
        assert!(!p.is_excluded(b"proc"));
        assert!(!p.in_runtime_zone(b"etc/hostname"));
    }

    #[test]
    fn unknown_keys_and_bad_patterns_are_rejected() {
        let err = Policy::parse("exclude = []\nexcludes = [\"x\"]").unwrap_err();
        assert!(err.to_string().contains("excludes"), "{err}");
        assert!(Policy::parse("exclude = [\"../etc\"]").is_err());
        assert!(Policy::parse("exclude = [\"/\"]").is_err());
        assert!(Policy::parse("runtime_zones = [\"a[\"]").is_err());
        for everything in ["**", "*", "*/x", "?", "**/bin"] {
            let err = Policy::parse(&format!("exclude = [\"{everything}\"]")).unwrap_err();
            assert!(
                err.to_string().contains("whole root"),
                "{everything}: {err}"
            );
        }
        assert!(Policy::parse("exclude = [\"opt[!x]cache\"]").is_err());
        assert!(Policy::parse("exclude = \"proc\"").is_err());
    }

    #[test]
    fn spec_round_trips() {
        let p = Policy::parse("exclude = [\"opt/x\"]").unwrap();
        let again = Policy::from_spec(p.spec().clone()).unwrap();
        assert_eq!(again.spec(), p.spec());
    }
}
