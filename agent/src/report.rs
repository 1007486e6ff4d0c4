//! The verify report: deviations, drift, coverage; as data, JSON and text.

use std::fmt::Write as _;

use driftwatch_proto::manifest::hex;
use driftwatch_proto::{Digest, DriftCounts, EntryKind, PackageManager, Provenance, Unverified};
use serde::{Serialize, Serializer};

use crate::path::{JsonPath, display, escape, unverified_json};
use crate::scan::ContentMode;

/// What kind of deviation, as named in every report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviationKind {
    /// On the host, not in the image.
    Added,
    /// In the image, not on the host.
    Removed,
    /// Content differs: file hash, symlink target or device numbers.
    Modified,
    /// Type, mode, owner, capabilities or hard links differ.
    Metadata,
    PackageAdded,
    PackageRemoved,
    PackageChanged,
}

impl DeviationKind {
    pub const ALL: [DeviationKind; 7] = [
        DeviationKind::Added,
        DeviationKind::Removed,
        DeviationKind::Modified,
        DeviationKind::Metadata,
        DeviationKind::PackageAdded,
        DeviationKind::PackageRemoved,
        DeviationKind::PackageChanged,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeviationKind::Added => "added",
            DeviationKind::Removed => "removed",
            DeviationKind::Modified => "modified",
            DeviationKind::Metadata => "metadata",
            DeviationKind::PackageAdded => "package_added",
            DeviationKind::PackageRemoved => "package_removed",
            DeviationKind::PackageChanged => "package_changed",
        }
    }
}

/// What deviated: a path, or a package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Path(Box<[u8]>),
    Package {
        manager: PackageManager,
        name: String,
        architecture: String,
    },
}

/// The values on one side of a deviation. Only the fields that matter for
/// the deviation are set: for `metadata`, just the fields that differ.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Attrs {
    #[serde(
        rename = "type",
        skip_serializing_if = "Option::is_none",
        serialize_with = "kind_str"
    )]
    pub kind: Option<EntryKind>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "octal")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Modification time, compared only in metadata-only mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtime: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "hex32")]
    pub blake3: Option<[u8; 32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
    /// `major:minor`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Hex of the raw `security.capability` xattr, or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// The first path (in sort order) sharing this entry's inode, or `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hardlinked_with: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

fn kind_str<S: Serializer>(kind: &Option<EntryKind>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.map_or("", EntryKind::as_str))
}

fn octal<S: Serializer>(mode: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{:04o}", mode.unwrap_or(0)))
}

fn hex32<S: Serializer>(hash: &Option<[u8; 32]>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hash.map(|h| hex(&h)).unwrap_or_default())
}

/// One difference between the image and the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deviation {
    pub kind: DeviationKind,
    pub subject: Subject,
    /// The image's side; `None` for additions.
    pub expected: Option<Attrs>,
    /// The host's side; `None` for removals.
    pub actual: Option<Attrs>,
}

impl Serialize for Deviation {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            kind: DeviationKind,
            #[serde(flatten, skip_serializing_if = "Option::is_none")]
            path: Option<JsonPath>,
            #[serde(skip_serializing_if = "Option::is_none")]
            package: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            manager: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            architecture: Option<&'a str>,
            expected: &'a Option<Attrs>,
            actual: &'a Option<Attrs>,
        }
        let mut json = Json {
            kind: self.kind,
            path: None,
            package: None,
            manager: None,
            architecture: None,
            expected: &self.expected,
            actual: &self.actual,
        };
        match &self.subject {
            Subject::Path(path) => json.path = Some(JsonPath::new(path)),
            Subject::Package {
                manager,
                name,
                architecture,
            } => {
                json.package = Some(name);
                json.manager = Some(manager.as_str());
                json.architecture = Some(architecture);
            }
        }
        json.serialize(s)
    }
}

/// How much of the root and package set was actually checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Paths compared (image and host together), not counting those that
    /// could not be verified.
    pub entries_checked: u64,
    pub packages_checked: u64,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
    /// What could not be verified, and why. A directory here stands for
    /// everything below it.
    pub not_verified: Vec<Unverified>,
    /// Policy exclusions: never walked, by design.
    pub excluded: Vec<String>,
}

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicySource {
    /// The policy baked into the manifest (the default).
    Manifest,
    /// A `--policy` file given to verify, overriding the baked one.
    File,
}

/// The result of verifying a host against its manifest.
#[derive(Debug, Clone)]
pub struct Report {
    pub manifest_digest: Digest,
    pub image: Provenance,
    pub content_mode: ContentMode,
    pub policy_source: PolicySource,
    pub drift: DriftCounts,
    /// Sorted by kind, then subject.
    pub deviations: Vec<Deviation>,
    /// Changes inside runtime zones: shown, but not drift.
    pub runtime_zone_changes: Vec<Deviation>,
    pub coverage: Coverage,
    pub elapsed_secs: f64,
}

impl Report {
    pub fn drift_pct(&self) -> f64 {
        self.drift.pct()
    }

    pub fn has_drift(&self) -> bool {
        !self.deviations.is_empty()
    }

    pub fn is_complete(&self) -> bool {
        self.coverage.not_verified.is_empty()
    }

    pub fn count(&self, kind: DeviationKind) -> usize {
        self.deviations.iter().filter(|d| d.kind == kind).count()
    }

    /// The JSON document `verify --format json` prints.
    pub fn to_json(&self) -> serde_json::Value {
        let not_verified = unverified_json(&self.coverage.not_verified);
        let counts: serde_json::Map<String, serde_json::Value> = DeviationKind::ALL
            .iter()
            .map(|k| (k.as_str().to_string(), self.count(*k).into()))
            .collect();
        serde_json::json!({
            "manifest_digest": self.manifest_digest.to_hex(),
            "image": {
                "image_id": self.image.image_id,
                "image_version": self.image.image_version,
                "source_commit": self.image.source_commit,
                "build_time_unix": self.image.build_time_unix,
            },
            "mode": match self.content_mode {
                ContentMode::Hash => "content",
                ContentMode::MetadataOnly => "metadata_only",
            },
            "policy_source": self.policy_source,
            "drift_pct": self.drift_pct(),
            "drifted": self.has_drift(),
            "deviating_items": self.drift.deviating,
            "observed_items": self.drift.observed,
            "counts": counts,
            "deviations": self.deviations,
            "runtime_zone_changes": self.runtime_zone_changes,
            "entries_checked": self.coverage.entries_checked,
            "packages_checked": self.coverage.packages_checked,
            "files_hashed": self.coverage.files_hashed,
            "bytes_hashed": self.coverage.bytes_hashed,
            "not_verified_count": self.coverage.not_verified.len(),
            "not_verified": not_verified,
            "complete": self.is_complete(),
            "excluded": self.coverage.excluded,
            "elapsed_secs": self.elapsed_secs,
        })
    }

    /// What an operator reads first: a verdict, the counts, then the
    /// deviations grouped by kind.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let verdict = if self.has_drift() {
            "DRIFT"
        } else {
            "NO DRIFT"
        };
        let _ = writeln!(
            out,
            "{verdict}: {:.3}% drift ({} of {} items deviate)",
            self.drift_pct(),
            self.drift.deviating,
            self.drift.observed
        );
        let image = &self.image;
        let _ = writeln!(
            out,
            "image {} {} (manifest {}){}",
            escape(or_dash(&image.image_id)),
            escape(or_dash(&image.image_version)),
            &self.manifest_digest.to_hex()[..16],
            if self.policy_source == PolicySource::File {
                ", policy overridden by --policy"
            } else {
                ""
            }
        );
        let summary: Vec<String> = DeviationKind::ALL
            .iter()
            .filter(|k| self.count(**k) > 0)
            .map(|k| format!("{} {}", self.count(*k), k.as_str()))
            .collect();
        if !summary.is_empty() {
            let _ = writeln!(out, "deviations: {}", summary.join(", "));
        }
        let c = &self.coverage;
        let _ = writeln!(
            out,
            "checked {} entries ({} files, {} hashed{}) and {} packages in {:.2}s",
            c.entries_checked,
            c.files_hashed,
            human_bytes(c.bytes_hashed),
            if self.content_mode == ContentMode::MetadataOnly {
                "; METADATA-ONLY: content not hashed"
            } else {
                ""
            },
            c.packages_checked,
            self.elapsed_secs
        );
        if !c.not_verified.is_empty() {
            let _ = writeln!(
                out,
                "NOT VERIFIED: {} paths (listed below)",
                c.not_verified.len()
            );
        }
        let _ = writeln!(
            out,
            "excluded by policy: {}",
            escape(&c.excluded.join(", "))
        );

        for kind in DeviationKind::ALL {
            let group: Vec<&Deviation> =
                self.deviations.iter().filter(|d| d.kind == kind).collect();
            if group.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{} ({})", kind.as_str(), group.len());
            for d in group {
                let _ = writeln!(out, "  {}", describe(d));
            }
        }
        if !self.runtime_zone_changes.is_empty() {
            let _ = writeln!(
                out,
                "\nruntime zones, expected to change, not drift ({})",
                self.runtime_zone_changes.len()
            );
            for d in &self.runtime_zone_changes {
                let _ = writeln!(out, "  {} {}", d.kind.as_str(), describe(d));
            }
        }
        if !c.not_verified.is_empty() {
            let _ = writeln!(out, "\nnot verified ({})", c.not_verified.len());
            for u in &c.not_verified {
                let _ = writeln!(out, "  {}: {}", display(&u.path), escape(&u.reason));
            }
        }
        out
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// One line for a deviation: its subject, then what changed.
fn describe(d: &Deviation) -> String {
    let subject = match &d.subject {
        Subject::Path(p) => display(p),
        Subject::Package {
            manager,
            name,
            architecture,
        } => format!("{manager} {} ({})", escape(name), escape(architecture)),
    };
    let detail = match (&d.expected, &d.actual) {
        (Some(e), Some(a)) => changes(e, a),
        (None, Some(a)) => attrs_line(a),
        (Some(e), None) => format!("was {}", attrs_line(e)),
        (None, None) => String::new(),
    };
    format!("{subject:<50} {detail}")
}

fn fields(a: &Attrs) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let mut put = |name, value: Option<String>| {
        if let Some(v) = value {
            out.push((name, v));
        }
    };
    put("type", a.kind.map(|k| k.to_string()));
    put("mode", a.mode.map(|m| format!("{m:04o}")));
    put("uid", a.uid.map(|v| v.to_string()));
    put("gid", a.gid.map(|v| v.to_string()));
    put("size", a.size.map(|v| v.to_string()));
    put("mtime", a.mtime.clone());
    put("blake3", a.blake3.map(|h| hex(&h[..8]) + "…"));
    put("target", a.symlink_target.clone());
    put("device", a.device.clone());
    put("capability", a.capability.clone());
    put("hardlinked_with", a.hardlinked_with.clone());
    put("version", a.version.as_deref().map(escape));
    out
}

fn attrs_line(a: &Attrs) -> String {
    fields(a)
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn changes(expected: &Attrs, actual: &Attrs) -> String {
    let actual = fields(actual);
    fields(expected)
        .into_iter()
        .map(|(name, before)| {
            let after = actual
                .iter()
                .find(|(n, _)| *n == name)
                .map_or("?", |(_, v)| v.as_str());
            format!("{name} {before} -> {after}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
