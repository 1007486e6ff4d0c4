//! The verify report's deviations in the collector's wire form.
//!
//! This is the one place the agent's domain types meet the generated
//! `driftwatch.v1` types. Paths go over the wire as raw bytes (they are not
//! always UTF-8); packages as a `PackageRef` named by `PackageManager::as_str`;
//! attribute values as the strings the JSON report uses, so the collector
//! shows exactly what `verify` prints.

use driftwatch_proto::pb::v1 as pb;

use crate::report::{Attrs, Deviation, Subject};

/// A deviation as sent to the collector.
pub fn deviation(d: &Deviation) -> pb::Deviation {
    pb::Deviation {
        kind: d.kind.as_str().to_string(),
        subject: Some(subject(&d.subject)),
        expected: d.expected.as_ref().map(attrs),
        actual: d.actual.as_ref().map(attrs),
    }
}

/// What deviated, as sent to the collector.
pub fn subject(subject: &Subject) -> pb::deviation::Subject {
    match subject {
        Subject::Path(path) => pb::deviation::Subject::Path(path.to_vec()),
        Subject::Package {
            manager,
            name,
            architecture,
        } => pb::deviation::Subject::Package(pb::PackageRef {
            manager: manager.as_str().to_string(),
            name: name.clone(),
            architecture: architecture.clone(),
        }),
    }
}

/// One side of a deviation; only the fields the report set.
pub fn attrs(a: &Attrs) -> pb::Attrs {
    pb::Attrs {
        r#type: a.kind.map(|k| k.as_str().to_string()),
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        mtime: a.mtime.clone(),
        blake3: a.blake3.map(|h| h.to_vec()),
        symlink_target: a.symlink_target.clone(),
        device: a.device.clone(),
        capability: a.capability.clone(),
        hardlinked_with: a.hardlinked_with.clone(),
        version: a.version.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::DeviationKind;
    use driftwatch_proto::{EntryKind, PackageManager};

    #[test]
    fn paths_stay_raw_bytes_and_packages_name_their_manager() {
        let d = Deviation {
            kind: DeviationKind::Metadata,
            subject: Subject::Path(b"caf\xe9"[..].into()),
            expected: Some(Attrs {
                mode: Some(0o644),
                kind: Some(EntryKind::File),
                ..Attrs::default()
            }),
            actual: Some(Attrs {
                mode: Some(0o4644),
                blake3: Some([7; 32]),
                ..Attrs::default()
            }),
        };
        let wire = deviation(&d);
        assert_eq!(wire.kind, "metadata");
        assert_eq!(
            wire.subject,
            Some(pb::deviation::Subject::Path(b"caf\xe9".to_vec()))
        );
        let expected = wire.expected.unwrap();
        assert_eq!(expected.mode, Some(0o644));
        assert_eq!(expected.r#type.as_deref(), Some("file"));
        assert_eq!(expected.uid, None);
        assert_eq!(wire.actual.unwrap().blake3, Some(vec![7; 32]));

        let p = Deviation {
            kind: DeviationKind::PackageChanged,
            subject: Subject::Package {
                manager: PackageManager::Rpm,
                name: "bash".into(),
                architecture: "x86_64".into(),
            },
            expected: None,
            actual: None,
        };
        let Some(pb::deviation::Subject::Package(package)) = deviation(&p).subject else {
            panic!("not a package");
        };
        assert_eq!(
            (package.manager.as_str(), package.name.as_str()),
            ("rpm", "bash")
        );
    }
}
