//! A manifest at a glance: what `bake` prints and `inspect` shows.

use std::fmt::Write as _;

use driftwatch_proto::{Digest, EntryKind, Manifest};

use crate::path::{display, escape, unverified_json};

/// Counts, provenance, policy and digest of a manifest.
#[derive(Debug, Clone)]
pub struct Summary<'a> {
    pub manifest: &'a Manifest,
    pub digest: Digest,
    /// Encoded size of the manifest file.
    pub bytes: usize,
    files: usize,
    dirs: usize,
    symlinks: usize,
}

impl<'a> Summary<'a> {
    /// Counts entry types once; both renderings use the counts.
    pub fn new(manifest: &'a Manifest, digest: Digest, bytes: usize) -> Summary<'a> {
        let count = |kind| manifest.entries.iter().filter(|e| e.kind == kind).count();
        Summary {
            manifest,
            digest,
            bytes,
            files: count(EntryKind::File),
            dirs: count(EntryKind::Dir),
            symlinks: count(EntryKind::Symlink),
        }
    }

    /// Entries that are not files, directories or symlinks.
    fn other(&self) -> usize {
        self.manifest.entries.len() - self.files - self.dirs - self.symlinks
    }

    pub fn bytes_per_entry(&self) -> f64 {
        self.bytes as f64 / self.manifest.entries.len().max(1) as f64
    }

    pub fn to_json(&self) -> serde_json::Value {
        let m = self.manifest;
        let p = &m.provenance;
        let unverified = unverified_json(&m.unverified);
        let databases: Vec<serde_json::Value> = m
            .package_databases
            .iter()
            .map(|d| {
                serde_json::json!({
                    "manager": d.manager.as_str(),
                    "path": d.path,
                    "packages": d.package_count,
                })
            })
            .collect();
        serde_json::json!({
            "digest": self.digest.to_hex(),
            "provenance": {
                "image_id": p.image_id,
                "image_version": p.image_version,
                "source_commit": p.source_commit,
                "build_time_unix": p.build_time_unix,
                "tool_version": p.tool_version,
            },
            "entries": m.entries.len(),
            "files": self.files,
            "dirs": self.dirs,
            "symlinks": self.symlinks,
            "other": self.other(),
            "packages": m.packages.len(),
            "package_databases": databases,
            "policy": {
                "exclude": m.policy.exclude,
                "runtime_zones": m.policy.runtime_zones,
            },
            "unverified_count": m.unverified.len(),
            "unverified": unverified,
            "bytes": self.bytes,
            "bytes_per_entry": (self.bytes_per_entry() * 10.0).round() / 10.0,
        })
    }

    pub fn to_text(&self) -> String {
        let m = self.manifest;
        let p = &m.provenance;
        let mut out = String::new();
        let _ = writeln!(out, "digest          {}", self.digest);
        let _ = writeln!(
            out,
            "image           {} {}",
            escape(dash(&p.image_id)),
            escape(dash(&p.image_version))
        );
        let _ = writeln!(out, "source commit   {}", escape(dash(&p.source_commit)));
        let _ = writeln!(
            out,
            "built           {} (unix {})",
            utc(p.build_time_unix),
            p.build_time_unix
        );
        let _ = writeln!(
            out,
            "baked by        driftwatch {}",
            escape(dash(&p.tool_version))
        );
        let _ = writeln!(
            out,
            "entries         {} ({} files, {} dirs, {} symlinks, {} other)",
            m.entries.len(),
            self.files,
            self.dirs,
            self.symlinks,
            self.other()
        );
        let dbs: Vec<String> = m
            .package_databases
            .iter()
            .map(|d| format!("{} {} ({})", d.package_count, d.manager, escape(&d.path)))
            .collect();
        let _ = writeln!(
            out,
            "packages        {}{}",
            m.packages.len(),
            if dbs.is_empty() {
                " (no package database found)".to_string()
            } else {
                format!(": {}", dbs.join(", "))
            }
        );
        let _ = writeln!(
            out,
            "size            {} bytes ({:.1} per entry)",
            self.bytes,
            self.bytes_per_entry()
        );
        let _ = writeln!(
            out,
            "excluded        {}",
            escape(&m.policy.exclude.join(", "))
        );
        let _ = writeln!(
            out,
            "runtime zones   {}",
            escape(&m.policy.runtime_zones.join(", "))
        );
        if !m.unverified.is_empty() {
            let _ = writeln!(out, "NOT RECORDED    {} paths:", m.unverified.len());
            for u in &m.unverified {
                let _ = writeln!(out, "  {}: {}", display(&u.path), escape(&u.reason));
            }
        }
        out
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// `YYYY-MM-DDTHH:MM:SSZ` from Unix seconds (civil-from-days, proleptic
/// Gregorian), so a build time reads as a date without a time-zone crate.
pub fn utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(super::utc(951_782_400), "2000-02-29T00:00:00Z");
    }
}
