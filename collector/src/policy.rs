//! The replacement policy: which hosts should be replaced, and why.
//!
//! Two kinds of reasons:
//! - *Sticky* ones are stored when they happen and stay until the host is
//!   retired: a critical change (a deviation under a critical path, or any
//!   setuid, setgid or capability change) and a host that reported again
//!   after it was retired. Putting a trojaned binary back does not undo a
//!   compromise.
//! - The others are derived from the host's current state every time they
//!   are asked for, so they clear when their cause clears: drift above the
//!   threshold, instance or image too old, an agent gone silent, a manifest
//!   digest no registered image has.

use std::collections::HashMap;

use driftwatch_proto::pb::v1::{Deviation, deviation::Subject};

use crate::alerts::rules::{PrivilegeGain, privilege_gained};
use crate::config::ReplacementPolicy;
use crate::store::{HostRecord, HostStatus, ImageRecord};
use crate::time;

/// Why a host should be replaced.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    /// Stable, for scripts: drift_threshold, critical_change, returned,
    /// instance_age, image_age, silent, superseded, unknown_manifest.
    pub code: String,
    /// For people.
    pub message: String,
    pub sticky: bool,
    /// When the cause started, where known (0 otherwise).
    pub since: i64,
}

/// The registered images, as the policy needs them.
#[derive(Debug, Default)]
pub struct KnownImages {
    build_times: HashMap<Vec<u8>, i64>,
    /// Per image family (image id), its newest registered image.
    newest: HashMap<String, ImageRecord>,
}

impl KnownImages {
    pub fn new<'a>(images: impl IntoIterator<Item = &'a ImageRecord>) -> KnownImages {
        let mut known = KnownImages::default();
        for image in images {
            known
                .build_times
                .insert(image.manifest_digest.clone(), image.build_time);
            let newer = known.newest.get(&image.image_id).is_none_or(|n| {
                (image.build_time, image.registered_at) > (n.build_time, n.registered_at)
            });
            if newer && !image.image_id.is_empty() {
                known.newest.insert(image.image_id.clone(), image.clone());
            }
        }
        known
    }

    /// The newer image of the same family that supersedes the image
    /// `digest` was built as, if one is registered.
    pub fn superseding(&self, image_id: &str, digest: &[u8]) -> Option<&ImageRecord> {
        let newest = self.newest.get(image_id)?;
        let built = self.build_times.get(digest).copied()?;
        (newest.manifest_digest != digest && newest.build_time > built).then_some(newest)
    }
}

/// A host as the fleet sees it now.
#[derive(Debug, Clone)]
pub struct Assessment {
    pub reasons: Vec<Reason>,
    pub instance_age_secs: i64,
    /// -1 when the image's build time is unknown.
    pub image_age_secs: i64,
    /// Every current reason was acknowledged.
    pub acknowledged: bool,
}

impl Assessment {
    pub fn flagged(&self) -> bool {
        !self.reasons.is_empty()
    }

    /// Replacement order: sticky reasons first, then the number of
    /// reasons; callers break ties by drift.
    pub fn urgency(&self) -> (bool, usize) {
        (self.reasons.iter().any(|r| r.sticky), self.reasons.len())
    }
}

/// Evaluates `host` at `now`.
pub fn assess(
    host: &HostRecord,
    now: i64,
    policy: &ReplacementPolicy,
    known: &KnownImages,
) -> Assessment {
    let started = if host.first_boot_time > 0 {
        host.first_boot_time.min(host.first_seen)
    } else {
        host.first_seen
    };
    let instance_age_secs = (now - started).max(0);
    let build_time = known
        .build_times
        .get(&host.manifest_digest)
        .copied()
        .filter(|t| *t > 0)
        .unwrap_or(host.image_build_time);
    let image_age_secs = if build_time > 0 {
        (now - build_time).max(0)
    } else {
        -1
    };
    let mut reasons = Vec::new();
    if host.status == HostStatus::Active {
        for flag in &host.sticky {
            let more = if flag.count > 1 {
                format!(" (and {} more)", flag.count - 1)
            } else {
                String::new()
            };
            reasons.push(Reason {
                code: flag.code.clone(),
                message: format!("{}{more}", flag.message),
                sticky: true,
                since: flag.since,
            });
        }
        if host.last_scan > 0 && host.drift_pct > policy.max_drift_pct {
            reasons.push(reason(
                "drift_threshold",
                format!(
                    "drift {:.3}% is above the {}% threshold",
                    host.drift_pct, policy.max_drift_pct
                ),
                host.last_scan,
            ));
        }
        if let Some(max) = policy.max_instance_age
            && instance_age_secs > max.as_secs() as i64
        {
            reasons.push(reason(
                "instance_age",
                format!(
                    "instance is {} old (maximum {})",
                    time::age(instance_age_secs),
                    time::duration(max)
                ),
                started + max.as_secs() as i64,
            ));
        }
        if let Some(max) = policy.max_image_age
            && image_age_secs > max.as_secs() as i64
        {
            reasons.push(reason(
                "image_age",
                format!(
                    "image was built {} ago (maximum {})",
                    time::age(image_age_secs),
                    time::duration(max)
                ),
                build_time + max.as_secs() as i64,
            ));
        }
        if let Some(timeout) = policy.silence_timeout
            && now - host.last_seen > timeout.as_secs() as i64
        {
            reasons.push(reason(
                "silent",
                format!(
                    "agent silent for {} (timeout {})",
                    time::age(now - host.last_seen),
                    time::duration(timeout)
                ),
                host.last_seen,
            ));
        }
        if let Some(newer) = known.superseding(&host.image_id, &host.manifest_digest)
            && now - newer.registered_at >= policy.superseded_grace.as_secs() as i64
        {
            reasons.push(reason(
                "superseded",
                format!(
                    "image {} {} is superseded by {} (registered {} ago; grace {})",
                    host.image_id,
                    host.image_version,
                    newer.image_version,
                    time::age(now - newer.registered_at),
                    time::duration(policy.superseded_grace)
                ),
                newer.registered_at + policy.superseded_grace.as_secs() as i64,
            ));
        }
        if !known.build_times.is_empty() && !known.build_times.contains_key(&host.manifest_digest) {
            reasons.push(reason(
                "unknown_manifest",
                format!(
                    "manifest {} is not a registered image (altered on the host?)",
                    short_hex(&host.manifest_digest)
                ),
                host.first_seen,
            ));
        }
    }
    let acknowledged =
        !reasons.is_empty() && reasons.iter().all(|r| host.acked_codes.contains(&r.code));
    Assessment {
        reasons,
        instance_age_secs,
        image_age_secs,
        acknowledged,
    }
}

fn reason(code: &str, message: String, since: i64) -> Reason {
    Reason {
        code: code.into(),
        message,
        sticky: false,
        since,
    }
}

/// The first 16 hex digits of a digest.
pub fn short_hex(bytes: &[u8]) -> String {
    let hex = driftwatch_proto::manifest::hex(bytes);
    hex[..hex.len().min(16)].to_string()
}

/// Why a new or changed deviation flags its host at once, if it does.
pub fn critical(policy: &ReplacementPolicy, deviation: &Deviation) -> Option<String> {
    let path = match &deviation.subject {
        Some(Subject::Path(path)) => path,
        _ => return None,
    };
    // The path is shown only in the (rare) message, not built per change.
    let shown = || crate::wire::display_path(path);
    match privilege_gained(deviation) {
        Some(PrivilegeGain::SetId(bits)) => {
            let what = match bits {
                0o4000 => "setuid",
                0o2000 => "setgid",
                _ => "setuid and setgid",
            };
            return Some(format!("{what} bit set on {}", shown()));
        }
        Some(PrivilegeGain::Capability) => {
            return Some(format!("file capabilities changed on {}", shown()));
        }
        None => {}
    }
    policy
        .critical_paths
        .matches(path)
        .then(|| format!("{} under a critical path: {}", deviation.kind, shown()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::store::StickyFlag;
    use driftwatch_proto::pb::v1::Attrs;

    fn host() -> HostRecord {
        HostRecord {
            host_id: "h".into(),
            hostname: "h".into(),
            image_id: "img".into(),
            image_version: "1".into(),
            manifest_digest: vec![1; 32],
            image_build_time: 1_000,
            agent_version: "0.1.0".into(),
            first_seen: 10_000,
            last_seen: 20_000,
            boot_time: 9_000,
            first_boot_time: 8_000,
            status: HostStatus::Active,
            last_seq: 1,
            dropped_reports: 0,
            drift_pct: 0.5,
            deviating: 1,
            observed: 200,
            not_verified: 0,
            last_scan: 20_000,
            deviation_count: 1,
            sticky: vec![],
            acked_codes: vec![],
            acked_at: 0,
            queue_state: crate::store::QueueState::None,
            drain_since: 0,
            drained_by: String::new(),
        }
    }

    fn codes(a: &Assessment) -> Vec<&str> {
        a.reasons.iter().map(|r| r.code.as_str()).collect()
    }

    #[test]
    fn each_rule_flags_and_clears_with_its_cause() {
        let policy = Config::default().replacement;
        let known = KnownImages::default();
        let mut h = host();
        let a = assess(&h, 20_100, &policy, &known);
        assert!(!a.flagged(), "{:?}", a.reasons);
        assert_eq!(a.instance_age_secs, 12_100, "counts from the earliest boot");
        assert_eq!(a.image_age_secs, 19_100);

        h.drift_pct = 2.0;
        assert_eq!(
            codes(&assess(&h, 20_100, &policy, &known)),
            ["drift_threshold"]
        );
        h.drift_pct = 0.2;
        assert!(!assess(&h, 20_100, &policy, &known).flagged(), "clears");

        let silent = 20_000 + 16 * 60;
        assert_eq!(codes(&assess(&h, silent, &policy, &known)), ["silent"]);

        let month = 31 * 86_400;
        let a = assess(&h, 8_000 + month, &policy, &known);
        assert_eq!(codes(&a), ["instance_age", "silent"]);
        assert!(
            a.reasons[0].message.contains("31d"),
            "{}",
            a.reasons[0].message
        );

        let other = ImageRecord {
            manifest_digest: vec![2; 32],
            image_id: "img".into(),
            image_version: "2".into(),
            source_commit: String::new(),
            build_time: 5,
            entries: 1,
            files: 1,
            packages: 0,
            registered_at: 1,
        };
        let known = KnownImages::new([&other]);
        assert_eq!(
            codes(&assess(&h, 20_100, &policy, &known)),
            ["unknown_manifest"]
        );
    }

    #[test]
    fn sticky_flags_show_until_retired_and_ack_covers_current_codes() {
        let policy = Config::default().replacement;
        let known = KnownImages::default();
        let mut h = host();
        h.sticky.push(StickyFlag {
            code: "critical_change".into(),
            message: "modified under a critical path: usr/bin/ls".into(),
            since: 15_000,
            count: 3,
        });
        let a = assess(&h, 20_100, &policy, &known);
        assert_eq!(codes(&a), ["critical_change"]);
        assert!(a.reasons[0].message.ends_with("(and 2 more)"));
        assert!(a.reasons[0].sticky);
        assert!(!a.acknowledged);
        h.acked_codes = vec!["critical_change".into()];
        assert!(assess(&h, 20_100, &policy, &known).acknowledged);
        h.drift_pct = 5.0;
        assert!(
            !assess(&h, 20_100, &policy, &known).acknowledged,
            "a new reason needs a new acknowledgement"
        );
        h.status = HostStatus::Retired;
        assert!(!assess(&h, 20_100, &policy, &known).flagged());
    }

    fn deviation(path: &str, expected: Option<Attrs>, actual: Option<Attrs>) -> Deviation {
        Deviation {
            kind: "metadata".into(),
            subject: Some(Subject::Path(path.as_bytes().to_vec())),
            expected,
            actual,
        }
    }

    #[test]
    fn critical_changes() {
        let policy = Config::default().replacement;
        let mode = |m| Attrs {
            mode: Some(m),
            ..Attrs::default()
        };
        let crit = |d| critical(&policy, &d);
        assert_eq!(
            crit(deviation("opt/x", Some(mode(0o755)), Some(mode(0o4755)))).as_deref(),
            Some("setuid bit set on opt/x")
        );
        assert_eq!(
            crit(deviation("opt/x", Some(mode(0o4755)), Some(mode(0o755)))),
            None
        );
        assert!(crit(deviation("opt/x", None, Some(mode(0o2755)))).is_some());
        let cap = |c: &str| Attrs {
            capability: Some(c.into()),
            ..Attrs::default()
        };
        assert!(crit(deviation("opt/x", Some(cap("none")), Some(cap("0100")))).is_some());
        assert_eq!(
            crit(deviation("opt/x", Some(cap("0100")), Some(cap("none")))),
            None
        );
        assert_eq!(
            crit(deviation("usr/bin/ls", None, None)).as_deref(),
            Some("metadata under a critical path: usr/bin/ls")
        );
        assert_eq!(crit(deviation("usr/share/doc/x", None, None)), None);
    }
}
