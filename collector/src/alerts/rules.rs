//! Severity rules: how alarming one new deviation is.
//!
//! A list of rules, checked in order; the first that matches gives the
//! severity, and a deviation no rule matches is [`Severity::Low`]. The
//! rules from `[[alerts.rules]]` come first, then (unless
//! `default_rules = false`) the built-in [`default_rule_configs`]:
//!
//! ```toml
//! [[alerts.rules]]
//! paths = ["opt/app/bin"]          # globs with prefix semantics; optional
//! kinds = ["added", "modified"]    # optional
//! severity = "high"                # high, medium or low
//!
//! [[alerts.rules]]
//! paths = ["opt/app/cache"]
//! severity = "low"
//! ```
//!
//! A rule matches a deviation when every condition it has holds:
//! - `paths`: the deviation is about a file under one of the patterns
//!   (the same pattern rules as every driftwatch policy, see
//!   [`driftwatch_proto::patterns`]). Package deviations have no path, so a
//!   rule with `paths` never matches them.
//! - `kinds`: the deviation's kind is one of these: `added`, `removed`,
//!   `modified`, `metadata`, `package_added`, `package_removed`,
//!   `package_changed`.
//! - `privilege_gain = true`: the file gained a setuid or setgid bit, or its
//!   file capabilities changed to something other than none (the same test
//!   as the replacement policy's `critical_change`).
//!
//! A rule with no condition matches everything (a catch-all).
//!
//! Because user rules come first, a broad user rule can lower the severity
//! of something the defaults call high (a `paths = ["opt"]`, `severity =
//! "low"` rule also covers a setuid binary under `opt`). Put a
//! `privilege_gain = true` rule first if that must never happen.

use std::fmt;

use driftwatch_proto::patterns::{PathPatterns, normalise};
use driftwatch_proto::pb::v1::{Attrs, Deviation, deviation::Subject};
use serde::{Deserialize, Serialize};

/// How alarming an alert is. Ordered: `Low < Medium < High`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A deviation's kind, as `Deviation.kind` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Added,
    Removed,
    Modified,
    Metadata,
    PackageAdded,
    PackageRemoved,
    PackageChanged,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Added,
        Kind::Removed,
        Kind::Modified,
        Kind::Metadata,
        Kind::PackageAdded,
        Kind::PackageRemoved,
        Kind::PackageChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Added => "added",
            Kind::Removed => "removed",
            Kind::Modified => "modified",
            Kind::Metadata => "metadata",
            Kind::PackageAdded => "package_added",
            Kind::PackageRemoved => "package_removed",
            Kind::PackageChanged => "package_changed",
        }
    }

    /// `None` for a kind this collector does not know.
    pub fn parse(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    pub fn is_package(self) -> bool {
        matches!(
            self,
            Kind::PackageAdded | Kind::PackageRemoved | Kind::PackageChanged
        )
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[alerts.rules]]` entry as written.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Path globs with prefix semantics; absent matches every path (and
    /// packages). Present, the rule never matches package deviations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Vec<String>>,
    /// Absent matches every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<Vec<Kind>>,
    /// Only deviations that gain setuid or setgid or change file
    /// capabilities.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privilege_gain: bool,
    pub severity: Severity,
}

/// Where commands run from: a change here runs as someone's code. The
/// collector's default critical paths start from the same list.
pub const DEFAULT_EXECUTABLE_PATHS: &[&str] = &[
    "bin",
    "sbin",
    "usr/bin",
    "usr/sbin",
    "usr/local/bin",
    "usr/local/sbin",
];

/// Shared libraries: loaded into someone's code.
pub const DEFAULT_LIBRARY_PATHS: &[&str] =
    &["lib", "lib64", "usr/lib", "usr/lib64", "usr/local/lib"];

/// Where intruders persist or escalate: accounts, sudo, ssh, PAM, the
/// loader, cron and systemd units.
pub const DEFAULT_SECURITY_PATHS: &[&str] = &[
    "etc/sudoers*",
    "etc/ssh",
    "root/.ssh",
    "etc/passwd",
    "etc/shadow",
    "etc/group",
    "etc/gshadow",
    "etc/pam.d",
    "etc/ld.so.preload",
    "etc/crontab",
    "etc/cron.*",
    "etc/anacrontab",
    "var/spool/cron",
    "etc/systemd/system",
];

/// Configuration and application trees: medium.
pub const DEFAULT_MEDIUM_PATHS: &[&str] = &["etc", "opt", "srv"];

/// The built-in rules, in order, as if written in the config file after
/// the user's rules:
/// 1. any setuid/setgid gained or file capability change: high;
/// 2. any package change: high;
/// 3. binaries and libraries ([`DEFAULT_EXECUTABLE_PATHS`],
///    [`DEFAULT_LIBRARY_PATHS`]): high;
/// 4. security configuration ([`DEFAULT_SECURITY_PATHS`]): high;
/// 5. anything else under `etc`, `opt`, `srv`: medium;
///
/// and everything else falls through to low.
pub fn default_rule_configs() -> Vec<RuleConfig> {
    let paths = |p: &[&str]| Some(p.iter().map(|s| s.to_string()).collect());
    vec![
        RuleConfig {
            paths: None,
            kinds: None,
            privilege_gain: true,
            severity: Severity::High,
        },
        RuleConfig {
            paths: None,
            kinds: Some(vec![
                Kind::PackageAdded,
                Kind::PackageRemoved,
                Kind::PackageChanged,
            ]),
            privilege_gain: false,
            severity: Severity::High,
        },
        RuleConfig {
            paths: paths(&[DEFAULT_EXECUTABLE_PATHS, DEFAULT_LIBRARY_PATHS].concat()),
            kinds: None,
            privilege_gain: false,
            severity: Severity::High,
        },
        RuleConfig {
            paths: paths(DEFAULT_SECURITY_PATHS),
            kinds: None,
            privilege_gain: false,
            severity: Severity::High,
        },
        RuleConfig {
            paths: paths(DEFAULT_MEDIUM_PATHS),
            kinds: None,
            privilege_gain: false,
            severity: Severity::Medium,
        },
    ]
}

const DEFAULT_LABELS: [&str; 5] = [
    "default: setuid, setgid or capability gained",
    "default: package change",
    "default: binaries and libraries",
    "default: security configuration",
    "default: etc, opt, srv",
];

/// Why the rules in the config file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("alerts.rules[{index}].paths: {pattern:?} {reason}")]
    BadPath {
        index: usize,
        pattern: String,
        reason: String,
    },
    #[error("alerts.rules[{index}].paths is empty; leave it out to match every path")]
    EmptyPaths { index: usize },
    #[error("alerts.rules[{index}].kinds is empty; leave it out to match every kind")]
    EmptyKinds { index: usize },
    #[error(
        "alerts.rules[{index}]: kind {kind} is a package change, which has no path and no file \
         mode, so it can never match a rule with paths or privilege_gain; put package kinds in \
         a rule of their own"
    )]
    PackageKindWithPathCondition { index: usize, kind: Kind },
}

/// Compiled rules, user rules first.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    paths: Option<PathPatterns>,
    kinds: Option<Vec<Kind>>,
    privilege_gain: bool,
    severity: Severity,
    label: String,
}

impl Rules {
    /// Compiles the user's rules, followed by the defaults when
    /// `default_rules` is true.
    pub fn new(user: &[RuleConfig], default_rules: bool) -> Result<Rules, RulesError> {
        let mut rules = Vec::new();
        for (index, config) in user.iter().enumerate() {
            rules.push(compile(index, config, format!("alerts.rules[{index}]"))?);
        }
        if default_rules {
            for (index, config) in default_rule_configs().iter().enumerate() {
                let rule = compile(index, config, DEFAULT_LABELS[index].to_string())
                    .expect("the default rules are valid");
                rules.push(rule);
            }
        }
        Ok(Rules { rules })
    }

    /// The built-in rules alone.
    pub fn defaults() -> Rules {
        Rules::new(&[], true).expect("the default rules are valid")
    }

    /// The severity of a new deviation: the first matching rule's, else low.
    pub fn classify(&self, deviation: &Deviation) -> Severity {
        self.classify_with_rule(deviation).0
    }

    /// The severity and which rule gave it (`alerts.rules[2]`,
    /// `default: package change`, or `no rule matched`), for logs.
    pub fn classify_with_rule(&self, deviation: &Deviation) -> (Severity, &str) {
        let kind = Kind::parse(&deviation.kind);
        let path = match &deviation.subject {
            Some(Subject::Path(path)) => Some(path.as_slice()),
            _ => None,
        };
        let mut gained = None;
        for rule in &self.rules {
            if let Some(kinds) = &rule.kinds
                && !kind.is_some_and(|k| kinds.contains(&k))
            {
                continue;
            }
            if let Some(patterns) = &rule.paths
                && !path.is_some_and(|p| patterns.matches(p))
            {
                continue;
            }
            if rule.privilege_gain
                && !*gained.get_or_insert_with(|| path.is_some() && privilege_gain(deviation))
            {
                continue;
            }
            return (rule.severity, &rule.label);
        }
        (Severity::Low, "no rule matched")
    }
}

fn compile(index: usize, config: &RuleConfig, label: String) -> Result<Rule, RulesError> {
    let paths = match &config.paths {
        None => None,
        Some(patterns) if patterns.is_empty() => return Err(RulesError::EmptyPaths { index }),
        Some(patterns) => {
            let mut normalised = Vec::with_capacity(patterns.len());
            for pattern in patterns {
                let n = normalise(pattern).map_err(|reason| RulesError::BadPath {
                    index,
                    pattern: pattern.clone(),
                    reason: reason.to_string(),
                })?;
                normalised.push(n);
            }
            Some(
                PathPatterns::new(&normalised).map_err(|e| RulesError::BadPath {
                    index,
                    pattern: patterns.join(", "),
                    reason: e.to_string(),
                })?,
            )
        }
    };
    if let Some(kinds) = &config.kinds {
        if kinds.is_empty() {
            return Err(RulesError::EmptyKinds { index });
        }
        if (paths.is_some() || config.privilege_gain)
            && let Some(kind) = kinds.iter().find(|k| k.is_package())
        {
            return Err(RulesError::PackageKindWithPathCondition { index, kind: *kind });
        }
    }
    Ok(Rule {
        paths,
        kinds: config.kinds.clone(),
        privilege_gain: config.privilege_gain,
        severity: config.severity,
        label,
    })
}

const SPECIAL_BITS: u32 = 0o6000;

/// Whether a file deviation gained a setuid or setgid bit, or its file
/// capabilities changed to something other than none: the same test the
/// replacement policy uses for `critical_change`.
pub fn privilege_gain(deviation: &Deviation) -> bool {
    privilege_gained(deviation).is_some()
}

/// What privilege a deviation gives, for messages: the setuid/setgid bits
/// gained, or a file capability set or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivilegeGain {
    /// `0o4000`, `0o2000` or both.
    SetId(u32),
    Capability,
}

/// The one test for a privilege gain, shared by the alert rules and the
/// collector's critical flags.
pub fn privilege_gained(deviation: &Deviation) -> Option<PrivilegeGain> {
    let expected = deviation.expected.as_ref();
    let actual = deviation.actual.as_ref();
    let special = |a: Option<&Attrs>| a.and_then(|a| a.mode).map_or(0, |m| m & SPECIAL_BITS);
    let gained = special(actual) & !special(expected);
    if gained != 0 {
        return Some(PrivilegeGain::SetId(gained));
    }
    fn capability(a: Option<&Attrs>) -> Option<&str> {
        a.and_then(|a| a.capability.as_deref())
    }
    let (before, after) = (capability(expected), capability(actual));
    (after.is_some_and(|c| c != "none") && before != after).then_some(PrivilegeGain::Capability)
}

#[cfg(test)]
mod tests {
    use super::*;
    use driftwatch_proto::pb::v1::PackageRef;

    fn file(kind: &str, path: &[u8]) -> Deviation {
        Deviation {
            kind: kind.into(),
            subject: Some(Subject::Path(path.to_vec())),
            expected: None,
            actual: None,
        }
    }

    fn with_modes(kind: &str, path: &[u8], before: Option<u32>, after: Option<u32>) -> Deviation {
        let attrs = |mode| Attrs {
            mode,
            ..Default::default()
        };
        Deviation {
            expected: before.map(|m| attrs(Some(m))),
            actual: after.map(|m| attrs(Some(m))),
            ..file(kind, path)
        }
    }

    fn package(kind: &str, name: &str) -> Deviation {
        Deviation {
            kind: kind.into(),
            subject: Some(Subject::Package(PackageRef {
                manager: "dpkg".into(),
                name: name.into(),
                architecture: "amd64".into(),
            })),
            expected: None,
            actual: None,
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        alerts: Alerts,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Alerts {
        #[serde(default)]
        rules: Vec<RuleConfig>,
    }

    fn parse(text: &str) -> Result<Vec<RuleConfig>, String> {
        toml::from_str::<File>(text)
            .map(|f| f.alerts.rules)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_grade_binaries_security_files_and_packages_high() {
        let rules = Rules::defaults();
        for (kind, path) in [
            ("added", &b"usr/bin/nc"[..]),
            ("modified", b"bin/ls"),
            ("removed", b"sbin/iptables"),
            ("metadata", b"usr/local/sbin/tool"),
            ("modified", b"usr/lib/x86_64-linux-gnu/libc.so.6"),
            ("modified", b"lib64/ld-linux-x86-64.so.2"),
            ("added", b"usr/local/lib/libevil.so"),
            ("modified", b"etc/sudoers"),
            ("added", b"etc/sudoers.d/90-backdoor"),
            ("modified", b"etc/ssh/sshd_config"),
            ("added", b"root/.ssh/authorized_keys"),
            ("modified", b"etc/passwd"),
            ("modified", b"etc/shadow"),
            ("modified", b"etc/group"),
            ("added", b"etc/pam.d/common-auth"),
            ("added", b"etc/ld.so.preload"),
            ("modified", b"etc/crontab"),
            ("added", b"etc/cron.d/job"),
            ("added", b"var/spool/cron/crontabs/root"),
            ("added", b"etc/systemd/system/evil.service"),
        ] {
            assert_eq!(
                rules.classify(&file(kind, path)),
                Severity::High,
                "{kind} {}",
                String::from_utf8_lossy(path)
            );
        }
        for kind in ["package_added", "package_removed", "package_changed"] {
            assert_eq!(rules.classify(&package(kind, "netcat")), Severity::High);
        }
        for path in [
            &b"etc/hosts"[..],
            b"opt/app/config.yml",
            b"srv/www/index.html",
        ] {
            assert_eq!(rules.classify(&file("modified", path)), Severity::Medium);
        }
        for path in [
            &b"home/alice/.bashrc"[..],
            b"var/www/x",
            b"usr/share/doc/x",
            b"etcetera",
        ] {
            assert_eq!(rules.classify(&file("added", path)), Severity::Low);
        }
        assert_eq!(
            rules.classify(&file("added", b"usr/bin/\xff\xfe")),
            Severity::High,
            "non-UTF-8 paths match"
        );
    }

    #[test]
    fn setuid_setgid_and_capabilities_gained_anywhere_are_high() {
        let rules = Rules::defaults();
        let p = b"home/alice/tool";
        assert_eq!(
            rules.classify(&with_modes("metadata", p, Some(0o755), Some(0o4755))),
            Severity::High
        );
        assert_eq!(
            rules.classify(&with_modes("metadata", p, Some(0o755), Some(0o2755))),
            Severity::High
        );
        assert_eq!(
            rules.classify(&with_modes("added", p, None, Some(0o6755))),
            Severity::High
        );
        // Already setuid in the image, or the bit dropped: nothing gained.
        assert_eq!(
            rules.classify(&with_modes("modified", p, Some(0o4755), Some(0o4755))),
            Severity::Low
        );
        assert_eq!(
            rules.classify(&with_modes("metadata", p, Some(0o4755), Some(0o755))),
            Severity::Low
        );
        let caps = |before: Option<&str>, after: Option<&str>| Deviation {
            expected: Some(Attrs {
                capability: before.map(Into::into),
                ..Default::default()
            }),
            actual: Some(Attrs {
                capability: after.map(Into::into),
                ..Default::default()
            }),
            ..file("metadata", p)
        };
        assert_eq!(
            rules.classify(&caps(Some("none"), Some("0000000002000000"))),
            Severity::High
        );
        assert_eq!(
            rules.classify(&caps(Some("01"), Some("02"))),
            Severity::High
        );
        assert_eq!(
            rules.classify(&caps(Some("02"), Some("none"))),
            Severity::Low,
            "capabilities dropped"
        );
        assert_eq!(
            rules.classify_with_rule(&with_modes("added", p, None, Some(0o4755))),
            (
                Severity::High,
                "default: setuid, setgid or capability gained"
            )
        );
    }

    #[test]
    fn user_rules_come_first_and_the_first_match_wins() {
        let rules = parse(
            r#"
            [[alerts.rules]]
            paths = ["/opt/app/bin/"]
            kinds = ["added", "modified"]
            severity = "high"

            [[alerts.rules]]
            paths = ["opt/app"]
            severity = "low"

            [[alerts.rules]]
            paths = ["opt/app/bin"]
            severity = "medium"

            [[alerts.rules]]
            kinds = ["package_changed"]
            severity = "low"

            [[alerts.rules]]
            paths = ["var/www/*.php"]
            severity = "high"
            "#,
        )
        .unwrap();
        let rules = Rules::new(&rules, true).unwrap();
        let c = |kind, path: &[u8]| rules.classify(&file(kind, path));
        assert_eq!(c("added", b"opt/app/bin/server"), Severity::High);
        assert_eq!(
            rules.classify_with_rule(&file("added", b"opt/app/bin/server")),
            (Severity::High, "alerts.rules[0]")
        );
        // Rule 0 does not cover removals; rule 1 comes before rule 2.
        assert_eq!(c("removed", b"opt/app/bin/server"), Severity::Low);
        // Rule 1 beats the default medium for opt.
        assert_eq!(c("modified", b"opt/app/data/x"), Severity::Low);
        assert_eq!(c("modified", b"opt/other"), Severity::Medium);
        assert_eq!(c("added", b"var/www/shell.php"), Severity::High);
        assert_eq!(c("added", b"var/www/sub/shell.php"), Severity::Low);
        assert_eq!(
            rules.classify(&package("package_changed", "openssl")),
            Severity::Low
        );
        assert_eq!(
            rules.classify(&package("package_added", "nc")),
            Severity::High
        );
        // Defaults still apply after the user's rules.
        assert_eq!(c("added", b"usr/bin/nc"), Severity::High);
        // A broad user rule does mask the privilege default (documented).
        assert_eq!(
            rules.classify(&with_modes(
                "metadata",
                b"opt/app/x",
                Some(0o755),
                Some(0o4755)
            )),
            Severity::Low
        );
    }

    #[test]
    fn without_defaults_only_user_rules_apply_and_the_rest_is_low() {
        let user = parse(
            r#"
            [[alerts.rules]]
            privilege_gain = true
            severity = "high"

            [[alerts.rules]]
            kinds = ["removed"]
            severity = "medium"
            "#,
        )
        .unwrap();
        let rules = Rules::new(&user, false).unwrap();
        assert_eq!(rules.classify(&file("added", b"usr/bin/nc")), Severity::Low);
        assert_eq!(
            rules.classify(&package("package_added", "nc")),
            Severity::Low
        );
        assert_eq!(
            rules.classify(&file("removed", b"home/x")),
            Severity::Medium
        );
        assert_eq!(
            rules.classify(&with_modes(
                "metadata",
                b"home/x",
                Some(0o755),
                Some(0o4755)
            )),
            Severity::High
        );
        assert_eq!(
            rules.classify_with_rule(&file("added", b"x")),
            (Severity::Low, "no rule matched")
        );
        // An unknown kind from a newer agent only matches kind-free rules.
        let catch_all = Rules::new(
            &[RuleConfig {
                paths: Some(vec!["usr".into()]),
                kinds: None,
                privilege_gain: false,
                severity: Severity::Medium,
            }],
            false,
        )
        .unwrap();
        assert_eq!(
            catch_all.classify(&file("teleported", b"usr/x")),
            Severity::Medium
        );
        assert_eq!(
            Rules::defaults().classify(&file("teleported", b"home/x")),
            Severity::Low
        );
    }

    #[test]
    fn bad_rules_are_clear_errors() {
        let compile = |text: &str| -> Result<Rules, String> {
            let rules = parse(text)?;
            Rules::new(&rules, true).map_err(|e| e.to_string())
        };
        let err = |text: &str| compile(text).unwrap_err();
        let e = err("[[alerts.rules]]\npaths = [\"/\"]\nseverity = \"high\"");
        assert!(
            e.contains("alerts.rules[0].paths") && e.contains("whole root"),
            "{e}"
        );
        let e = err(
            "[[alerts.rules]]\nseverity = \"low\"\n[[alerts.rules]]\npaths = [\"a/../b\"]\nseverity = \"high\"",
        );
        assert!(
            e.contains("alerts.rules[1].paths") && e.contains("'..'"),
            "{e}"
        );
        let e = err("[[alerts.rules]]\npaths = [\"a/[b\"]\nseverity = \"high\"");
        assert!(e.contains("not a valid glob"), "{e}");
        let e = err("[[alerts.rules]]\npaths = []\nseverity = \"high\"");
        assert!(e.contains("paths is empty"), "{e}");
        let e = err("[[alerts.rules]]\nkinds = []\nseverity = \"high\"");
        assert!(e.contains("kinds is empty"), "{e}");
        let e = err("[[alerts.rules]]\nkinds = [\"deleted\"]\nseverity = \"high\"");
        assert!(e.contains("unknown variant `deleted`"), "{e}");
        let e = err("[[alerts.rules]]\nseverity = \"critical\"");
        assert!(e.contains("unknown variant `critical`"), "{e}");
        let e = err("[[alerts.rules]]\npaths = [\"etc\"]");
        assert!(e.contains("missing field `severity`"), "{e}");
        let e = err("[[alerts.rules]]\npath = [\"etc\"]\nseverity = \"high\"");
        assert!(e.contains("unknown field `path`"), "{e}");
        let e = err(
            "[[alerts.rules]]\npaths = [\"usr\"]\nkinds = [\"added\", \"package_added\"]\nseverity = \"high\"",
        );
        assert!(
            e.contains("package_added") && e.contains("rule of their own"),
            "{e}"
        );
        let e = err(
            "[[alerts.rules]]\nprivilege_gain = true\nkinds = [\"package_changed\"]\nseverity = \"high\"",
        );
        assert!(e.contains("package_changed"), "{e}");
    }

    #[test]
    fn names_round_trip() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("nope"), None);
        assert!(Severity::High > Severity::Medium && Severity::Medium > Severity::Low);
        assert_eq!(
            serde_json::to_string(&Severity::Medium).unwrap(),
            "\"medium\""
        );
    }
}
