//! The manifest file format: framing, digest, version check, validation.
//!
//! ```text
//! magic    8 bytes  MAGIC
//! version  u32 LE   FORMAT_VERSION
//! body     pb::ManifestFile, protobuf, to end of file
//! ```
//!
//! The digest is BLAKE3 over `ManifestFile.content` (an encoded
//! `pb::Content`) exactly as stored, so it is canonical by construction: the
//! encoder writes fields in a fixed order and sorts every list. The same
//! bytes are also hashed into `content_blake3`, which catches corruption and
//! truncation before anything is trusted.
//!
//! Decoding treats the input as hostile: every length, enum and ordering is
//! checked, and any violation is a [`ManifestError`] naming what was wrong.

use prost::Message;
use prost::encoding::{WireType, decode_key, decode_varint, message};

use super::{
    Digest, Entry, EntryKind, Manifest, Package, PackageDatabase, PackageManager, PolicySpec,
    Provenance, Unverified,
};
use crate::pb::manifest as pb;

/// The first eight bytes of every manifest. The high byte and the CR LF /
/// SUB sequence catch text-mode mangling, as PNG's signature does.
pub const MAGIC: [u8; 8] = *b"\x89DWMF\r\n\x1a";

/// The format version this build writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;

const HEADER_LEN: usize = MAGIC.len() + 4;

/// Linux's limits: PATH_MAX and NAME_MAX. A longer path cannot exist on the
/// host, so a manifest holding one is corrupt or crafted.
pub const MAX_PATH: usize = 4096;
pub const MAX_NAME: usize = 255;

/// How many bytes of decoded paths one byte of content may yield. Front
/// coding makes real manifests about 1:1 (60 bytes per entry on /usr, paths
/// averaging about as much); a crafted one could reach hundreds.
const PATH_EXPANSION_LIMIT: usize = 32;

/// Why a manifest could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("not a driftwatch manifest (bad magic bytes)")]
    NotAManifest,
    #[error("manifest is truncated: {0}")]
    Truncated(&'static str),
    #[error(
        "manifest format version {found} is newer than this driftwatch supports (up to {supported}); upgrade driftwatch-agent"
    )]
    NewerVersion { found: u32, supported: u32 },
    #[error("manifest format version 0 is invalid")]
    InvalidVersion,
    #[error("manifest is corrupt: {0}")]
    Corrupt(String),
    #[error("manifest content checksum mismatch: the file is corrupt or truncated")]
    ChecksumMismatch,
}

impl ManifestError {
    fn corrupt(what: impl Into<String>) -> ManifestError {
        ManifestError::Corrupt(what.into())
    }
}

/// A manifest encoded to bytes, with its digest.
#[derive(Debug, Clone)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub digest: Digest,
}

/// A manifest decoded from bytes, with the digest of what was read.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub manifest: Manifest,
    pub digest: Digest,
    /// Size of the encoded manifest that was read, in bytes.
    pub encoded_len: usize,
}

/// Encodes a manifest. Lists are sorted here, so callers cannot produce two
/// encodings of the same content.
pub fn encode(manifest: &Manifest) -> Encoded {
    let mut entries: Vec<&Entry> = manifest.entries.iter().collect();
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    entries.dedup_by(|a, b| a.path == b.path);
    // Sorted and deduplicated by key, exactly the order decode demands: a
    // sort on the whole package (which includes the version) would put one
    // name's architectures in version order and make the file unreadable.
    let mut packages: Vec<&Package> = manifest.packages.iter().collect();
    packages.sort_by(|a, b| a.key().cmp(&b.key()));
    packages.dedup_by(|a, b| a.key() == b.key());
    let mut databases: Vec<&PackageDatabase> = manifest.package_databases.iter().collect();
    databases.sort_by(|a, b| (a.manager, &a.path).cmp(&(b.manager, &b.path)));
    let mut unverified: Vec<&Unverified> = manifest.unverified.iter().collect();
    unverified.sort();

    // Written field by field (in tag order, as prost would) so that only
    // one protobuf entry exists at a time: a manifest of 100k+ entries
    // would otherwise be held twice, once as domain types and once as pb.
    let mut content = Vec::with_capacity(manifest.entries.len() * 64);
    let policy = pb::Policy {
        exclude: manifest.policy.exclude.clone(),
        runtime_zones: manifest.policy.runtime_zones.clone(),
    };
    message::encode(CONTENT_POLICY, &policy, &mut content);
    let mut previous: &[u8] = &[];
    for entry in entries {
        message::encode(CONTENT_ENTRIES, &entry_to_pb(entry, previous), &mut content);
        previous = &entry.path;
    }
    for p in packages {
        let package = pb::Package {
            manager: manager_to_pb(p.manager) as i32,
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.architecture.clone(),
        };
        message::encode(CONTENT_PACKAGES, &package, &mut content);
    }
    for d in databases {
        let database = pb::PackageDatabase {
            manager: manager_to_pb(d.manager) as i32,
            path: d.path.clone(),
            package_count: d.package_count,
        };
        message::encode(CONTENT_PACKAGE_DATABASES, &database, &mut content);
    }
    for u in unverified {
        let unverified = pb::Unverified {
            path: u.path.to_vec(),
            reason: u.reason.clone(),
        };
        message::encode(CONTENT_UNVERIFIED, &unverified, &mut content);
    }
    let digest = Digest(*blake3::hash(&content).as_bytes());
    let p = &manifest.provenance;
    let file = pb::ManifestFile {
        provenance: Some(pb::Provenance {
            image_id: p.image_id.clone(),
            image_version: p.image_version.clone(),
            source_commit: p.source_commit.clone(),
            build_time_unix: p.build_time_unix,
            tool_version: p.tool_version.clone(),
        }),
        content_blake3: digest.0.to_vec(),
        content,
    };
    let mut bytes = Vec::with_capacity(HEADER_LEN + file.encoded_len());
    bytes.extend_from_slice(&MAGIC);
    bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    file.encode(&mut bytes)
        .expect("a Vec grows to fit the encoding");
    Encoded { bytes, digest }
}

/// Decodes and validates a manifest.
pub fn decode(bytes: &[u8]) -> Result<Decoded, ManifestError> {
    if bytes.len() < MAGIC.len() {
        return if MAGIC.starts_with(bytes) {
            Err(ManifestError::Truncated("shorter than the file header"))
        } else {
            Err(ManifestError::NotAManifest)
        };
    }
    if bytes[..MAGIC.len()] != MAGIC {
        return Err(ManifestError::NotAManifest);
    }
    let Some(version) = bytes.get(MAGIC.len()..HEADER_LEN) else {
        return Err(ManifestError::Truncated("shorter than the file header"));
    };
    let version = u32::from_le_bytes(version.try_into().expect("four bytes"));
    if version == 0 {
        return Err(ManifestError::InvalidVersion);
    }
    if version > FORMAT_VERSION {
        return Err(ManifestError::NewerVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    // ManifestFile and Content are walked field by field rather than
    // decoded whole: the content is hashed and read in place (no copy), and
    // entries are converted one at a time (no Vec of protobuf entries).
    let mut provenance = None;
    let mut content: Option<&[u8]> = None;
    let mut checksum: Option<&[u8]> = None;
    for field in fields(&bytes[HEADER_LEN..]) {
        let (tag, payload) =
            field.map_err(|e| ManifestError::corrupt(format!("file body: {e}")))?;
        match tag {
            FILE_PROVENANCE => provenance = Some(payload),
            FILE_CONTENT => content = Some(payload),
            FILE_CONTENT_BLAKE3 => checksum = Some(payload),
            _ => {} // unknown fields from a compatible writer are skipped
        }
    }
    let checksum = checksum.ok_or(ManifestError::Truncated("content checksum missing"))?;
    let content = content.ok_or(ManifestError::Truncated("content missing"))?;
    if checksum.len() != 32 {
        return Err(ManifestError::corrupt("content checksum is not 32 bytes"));
    }
    let digest = Digest(*blake3::hash(content).as_bytes());
    if digest.0[..] != *checksum {
        return Err(ManifestError::ChecksumMismatch);
    }
    let provenance = match provenance {
        Some(p) => pb::Provenance::decode(p)
            .map_err(|e| ManifestError::corrupt(format!("provenance: {e}")))?,
        None => pb::Provenance::default(),
    };
    let provenance = Provenance {
        image_id: provenance.image_id,
        image_version: provenance.image_version,
        source_commit: provenance.source_commit,
        build_time_unix: provenance.build_time_unix,
        tool_version: provenance.tool_version,
    };
    let rest = ContentWithoutEntries::decode(content)
        .map_err(|e| ManifestError::corrupt(format!("content: {e}")))?;
    let policy = rest
        .policy
        .clone()
        .map(|p| PolicySpec {
            exclude: p.exclude,
            runtime_zones: p.runtime_zones,
        })
        .unwrap_or_default();

    // Count first so the entries are allocated once, at their exact size.
    let count = fields(content)
        .filter(|f| matches!(f, Ok((CONTENT_ENTRIES, _))))
        .count();
    // A crafted file must not make us reserve or build far more than it
    // holds: an entry takes at least a few bytes on disk, and front coding
    // lets a path grow by at most MAX_PATH per entry, so both the up-front
    // reservation and the total of decoded path bytes are bounded by the
    // content's size.
    let mut entries: Vec<Entry> = Vec::with_capacity(count.min(content.len() / 8 + 1));
    let path_budget = content
        .len()
        .saturating_mul(PATH_EXPANSION_LIMIT)
        .max(1 << 20);
    let mut path_bytes = 0usize;
    let mut index = 0usize;
    for field in fields(content) {
        let (tag, payload) = field.map_err(|e| ManifestError::corrupt(format!("content: {e}")))?;
        if tag != CONTENT_ENTRIES {
            continue;
        }
        let pb_entry = pb::Entry::decode(payload)
            .map_err(|e| ManifestError::corrupt(format!("entry {index}: {e}")))?;
        let previous = entries.last().map(|e| &e.path[..]).unwrap_or(&[]);
        let entry = entry_from_pb(pb_entry, previous)
            .map_err(|why| ManifestError::corrupt(format!("entry {index}: {why}")))?;
        if index > 0 && entry.path[..] <= *previous {
            return Err(ManifestError::corrupt(format!(
                "entry {index}: paths are not strictly sorted"
            )));
        }
        path_bytes += entry.path.len();
        if path_bytes > path_budget {
            return Err(ManifestError::corrupt(format!(
                "entry {index}: paths expand to more than {PATH_EXPANSION_LIMIT} times the manifest's size"
            )));
        }
        entries.push(entry);
        index += 1;
    }
    let content = rest;

    let mut packages = Vec::with_capacity(content.packages.len());
    for (index, p) in content.packages.into_iter().enumerate() {
        let manager = manager_from_pb(p.manager)
            .map_err(|why| ManifestError::corrupt(format!("package {index}: {why}")))?;
        packages.push(Package {
            manager,
            name: p.name,
            version: p.version,
            architecture: p.architecture,
        });
    }
    if packages.windows(2).any(|w| w[0].key() >= w[1].key()) {
        return Err(ManifestError::corrupt(
            "packages are not strictly sorted by (manager, name, architecture)",
        ));
    }
    let mut package_databases = Vec::with_capacity(content.package_databases.len());
    for d in content.package_databases {
        package_databases.push(PackageDatabase {
            manager: manager_from_pb(d.manager)
                .map_err(|why| ManifestError::corrupt(format!("package database: {why}")))?,
            path: d.path,
            package_count: d.package_count,
        });
    }
    let mut unverified = Vec::with_capacity(content.unverified.len());
    for u in content.unverified {
        check_path(&u.path).map_err(|why| ManifestError::corrupt(format!("unverified: {why}")))?;
        unverified.push(Unverified {
            path: u.path.into(),
            reason: u.reason,
        });
    }

    Ok(Decoded {
        manifest: Manifest {
            provenance,
            policy,
            entries,
            packages,
            package_databases,
            unverified,
        },
        digest,
        encoded_len: bytes.len(),
    })
}

// Field numbers from manifest.proto, for the field-by-field walk.
const FILE_PROVENANCE: u32 = 1;
const FILE_CONTENT: u32 = 2;
const FILE_CONTENT_BLAKE3: u32 = 3;
const CONTENT_POLICY: u32 = 1;
const CONTENT_ENTRIES: u32 = 2;
const CONTENT_PACKAGES: u32 = 3;
const CONTENT_PACKAGE_DATABASES: u32 = 4;
const CONTENT_UNVERIFIED: u32 = 5;

/// `pb::Content` without its entries: prost skips field 2, so the small
/// parts decode normally while entries are streamed separately.
#[derive(Clone, PartialEq, prost::Message)]
struct ContentWithoutEntries {
    #[prost(message, optional, tag = "1")]
    policy: Option<pb::Policy>,
    #[prost(message, repeated, tag = "3")]
    packages: Vec<pb::Package>,
    #[prost(message, repeated, tag = "4")]
    package_databases: Vec<pb::PackageDatabase>,
    #[prost(message, repeated, tag = "5")]
    unverified: Vec<pb::Unverified>,
}

/// The fields of a message whose fields are all length-delimited (true of
/// `ManifestFile` and `Content`), as (tag, payload) borrowed from `buf`.
fn fields(mut buf: &[u8]) -> impl Iterator<Item = Result<(u32, &[u8]), String>> {
    std::iter::from_fn(move || {
        loop {
            if buf.is_empty() {
                return None;
            }
            let field = (|| {
                let (tag, wire_type) = decode_key(&mut buf).map_err(|e| e.to_string())?;
                let len = match wire_type {
                    WireType::LengthDelimited => {
                        decode_varint(&mut buf).map_err(|e| e.to_string())?
                    }
                    // Fields a newer writer may add: skipped, never misread.
                    WireType::Varint => {
                        decode_varint(&mut buf).map_err(|e| e.to_string())?;
                        return Ok(None);
                    }
                    WireType::SixtyFourBit => 8,
                    WireType::ThirtyTwoBit => 4,
                    WireType::StartGroup | WireType::EndGroup => {
                        return Err(format!("field {tag} uses deprecated groups"));
                    }
                };
                let len = usize::try_from(len)
                    .ok()
                    .filter(|&l| l <= buf.len())
                    .ok_or_else(|| {
                        format!("field {tag} claims {len} bytes, {} remain", buf.len())
                    })?;
                let (payload, rest) = buf.split_at(len);
                buf = rest;
                Ok((wire_type == WireType::LengthDelimited).then_some((tag, payload)))
            })();
            match field {
                Ok(Some(field)) => return Some(Ok(field)),
                Ok(None) => continue,
                Err(e) => {
                    buf = &[];
                    return Some(Err(e));
                }
            }
        }
    })
}

fn entry_to_pb(entry: &Entry, previous: &[u8]) -> pb::Entry {
    let shared = entry
        .path
        .iter()
        .zip(previous)
        .take_while(|(a, b)| a == b)
        .count();
    pb::Entry {
        shared_prefix: u32::try_from(shared).expect("paths are shorter than 4 GiB"),
        path_suffix: entry.path[shared..].to_vec(),
        r#type: kind_to_pb(entry.kind) as i32,
        mode: entry.mode,
        uid: entry.uid,
        gid: entry.gid,
        size: entry.size,
        mtime_sec: entry.mtime_sec,
        mtime_nsec: entry.mtime_nsec,
        blake3: entry.blake3.map(|h| h.to_vec()).unwrap_or_default(),
        symlink_target: entry
            .symlink_target
            .as_deref()
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
        device_major: entry.device.map_or(0, |d| d.0),
        device_minor: entry.device.map_or(0, |d| d.1),
        capability: entry
            .capability
            .as_deref()
            .map(<[u8]>::to_vec)
            .unwrap_or_default(),
        hardlink_group: entry.hardlink_group,
    }
}

fn entry_from_pb(e: pb::Entry, previous: &[u8]) -> Result<Entry, String> {
    let shared = e.shared_prefix as usize;
    if shared > previous.len() {
        return Err(format!(
            "shared prefix {shared} is longer than the previous path ({})",
            previous.len()
        ));
    }
    let mut path = Vec::with_capacity(shared + e.path_suffix.len());
    path.extend_from_slice(&previous[..shared]);
    path.extend_from_slice(&e.path_suffix);
    check_path(&path)?;
    let kind = kind_from_pb(e.r#type)?;
    if e.mode > 0o7777 {
        return Err(format!("mode {:o} has bits outside 07777", e.mode));
    }
    let blake3 = match e.blake3.len() {
        0 => None,
        32 => {
            if kind != EntryKind::File {
                return Err(format!("a {kind} cannot have a content hash"));
            }
            Some(e.blake3.try_into().expect("32 bytes"))
        }
        n => return Err(format!("content hash is {n} bytes, expected 32")),
    };
    if e.mtime_nsec >= 1_000_000_000 {
        return Err(format!("mtime nanoseconds {} out of range", e.mtime_nsec));
    }
    let device = matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice)
        .then_some((e.device_major, e.device_minor));
    let symlink_target = if kind == EntryKind::Symlink {
        Some(e.symlink_target.into())
    } else if e.symlink_target.is_empty() {
        None
    } else {
        return Err(format!("a {kind} cannot have a symlink target"));
    };
    Ok(Entry {
        path: path.into(),
        kind,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: e.size,
        mtime_sec: e.mtime_sec,
        mtime_nsec: e.mtime_nsec,
        blake3,
        symlink_target,
        device,
        capability: (!e.capability.is_empty()).then(|| e.capability.into()),
        hardlink_group: e.hardlink_group,
    })
}

/// A manifest path is relative, '/'-separated, with no empty, `.` or `..`
/// components: it can never name anything outside the root.
pub fn check_path(path: &[u8]) -> Result<(), String> {
    if path.is_empty() {
        return Ok(());
    }
    if path.len() > MAX_PATH {
        return Err(format!(
            "path is {} bytes, longer than {MAX_PATH}",
            path.len()
        ));
    }
    for component in path.split(|&b| b == b'/') {
        match component {
            c if c.len() > MAX_NAME => {
                return Err(format!(
                    "a path component is {} bytes, longer than {MAX_NAME}",
                    c.len()
                ));
            }
            b"" => return Err("path has an empty component or a leading '/'".into()),
            b"." | b".." => return Err("path has a '.' or '..' component".into()),
            c if c.contains(&0) => return Err("path contains a NUL byte".into()),
            _ => {}
        }
    }
    Ok(())
}

fn kind_to_pb(kind: EntryKind) -> pb::EntryType {
    match kind {
        EntryKind::File => pb::EntryType::File,
        EntryKind::Dir => pb::EntryType::Dir,
        EntryKind::Symlink => pb::EntryType::Symlink,
        EntryKind::Fifo => pb::EntryType::Fifo,
        EntryKind::Socket => pb::EntryType::Socket,
        EntryKind::CharDevice => pb::EntryType::CharDevice,
        EntryKind::BlockDevice => pb::EntryType::BlockDevice,
    }
}

fn kind_from_pb(value: i32) -> Result<EntryKind, String> {
    Ok(
        match pb::EntryType::try_from(value).map_err(|_| format!("unknown entry type {value}"))? {
            pb::EntryType::File => EntryKind::File,
            pb::EntryType::Dir => EntryKind::Dir,
            pb::EntryType::Symlink => EntryKind::Symlink,
            pb::EntryType::Fifo => EntryKind::Fifo,
            pb::EntryType::Socket => EntryKind::Socket,
            pb::EntryType::CharDevice => EntryKind::CharDevice,
            pb::EntryType::BlockDevice => EntryKind::BlockDevice,
        },
    )
}

fn manager_to_pb(manager: PackageManager) -> pb::PackageManager {
    match manager {
        PackageManager::Dpkg => pb::PackageManager::Dpkg,
        PackageManager::Apk => pb::PackageManager::Apk,
        PackageManager::Rpm => pb::PackageManager::Rpm,
    }
}

fn manager_from_pb(value: i32) -> Result<PackageManager, String> {
    match pb::PackageManager::try_from(value) {
        Ok(pb::PackageManager::Dpkg) => Ok(PackageManager::Dpkg),
        Ok(pb::PackageManager::Apk) => Ok(PackageManager::Apk),
        Ok(pb::PackageManager::Rpm) => Ok(PackageManager::Rpm),
        _ => Err(format!("unknown package manager {value}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let mut file = Entry::new(*b"etc/passwd", EntryKind::File);
        file.mode = 0o644;
        file.size = 12;
        file.blake3 = Some([7; 32]);
        let mut link = Entry::new(*b"bin", EntryKind::Symlink);
        link.symlink_target = Some((*b"usr/bin").into());
        let mut odd = Entry::new(b"etc/\xffname".to_vec(), EntryKind::File);
        odd.hardlink_group = 1;
        let mut dev = Entry::new(*b"dev/null", EntryKind::CharDevice);
        dev.device = Some((1, 3));
        Manifest {
            provenance: Provenance {
                image_id: "img".into(),
                build_time_unix: 1_700_000_000,
                ..Provenance::default()
            },
            policy: PolicySpec {
                exclude: vec!["proc".into()],
                runtime_zones: vec!["etc/hostname".into()],
            },
            entries: vec![
                file,
                Entry::new(Vec::new(), EntryKind::Dir),
                link,
                odd,
                Entry::new(*b"etc", EntryKind::Dir),
                dev,
            ],
            packages: vec![Package {
                manager: PackageManager::Dpkg,
                name: "bash".into(),
                version: "5.2".into(),
                architecture: "amd64".into(),
            }],
            ..Manifest::default()
        }
    }

    #[test]
    fn round_trips_and_sorts() {
        let encoded = encode(&sample());
        let decoded = decode(&encoded.bytes).unwrap();
        assert_eq!(decoded.digest, encoded.digest);
        let paths: Vec<&[u8]> = decoded
            .manifest
            .entries
            .iter()
            .map(|e| &e.path[..])
            .collect();
        assert_eq!(
            paths,
            [
                &b""[..],
                b"bin",
                b"dev/null",
                b"etc",
                b"etc/passwd",
                b"etc/\xffname"
            ]
        );
        let mut expected = sample();
        expected.entries.sort_by(|a, b| a.path.cmp(&b.path));
        assert_eq!(decoded.manifest, expected);
    }

    #[test]
    fn streamed_encoding_is_standard_protobuf() {
        let bytes = encode(&sample()).bytes;
        let file = pb::ManifestFile::decode(&bytes[HEADER_LEN..]).unwrap();
        let content = pb::Content::decode(&file.content[..]).unwrap();
        assert_eq!(content.entries.len(), 6);
        assert_eq!(content.encode_to_vec(), file.content);
    }

    #[test]
    fn digest_ignores_provenance_and_input_order() {
        let a = sample();
        let mut b = sample();
        b.entries.reverse();
        b.provenance.build_time_unix += 60;
        b.provenance.image_id = "other".into();
        assert_eq!(encode(&a).digest, encode(&b).digest);
        b.entries[0].mode = 0o600;
        assert_ne!(encode(&a).digest, encode(&b).digest);
    }

    #[test]
    fn rejects_garbage_truncation_and_corruption() {
        assert!(matches!(
            decode(b"hello world, not ours"),
            Err(ManifestError::NotAManifest)
        ));
        assert!(matches!(decode(b""), Err(ManifestError::Truncated(_))));
        let bytes = encode(&sample()).bytes;
        for cut in [4, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                decode(&bytes[..cut]).is_err(),
                "truncated at {cut} accepted"
            );
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 40;
        flipped[last] ^= 0x40;
        assert!(decode(&flipped).is_err());
    }

    #[test]
    fn one_name_on_two_architectures_round_trips() {
        // The i686 build has the newer version: sorting by whole package
        // (version before architecture) would misorder these.
        let mut m = sample();
        m.packages = vec![
            Package {
                manager: PackageManager::Rpm,
                name: "glibc".into(),
                version: "2.34-99.el9".into(),
                architecture: "x86_64".into(),
            },
            Package {
                manager: PackageManager::Rpm,
                name: "glibc".into(),
                version: "2.34-100.el9".into(),
                architecture: "i686".into(),
            },
        ];
        let decoded = decode(&encode(&m).bytes).unwrap();
        let arches: Vec<&str> = decoded
            .manifest
            .packages
            .iter()
            .map(|p| p.architecture.as_str())
            .collect();
        assert_eq!(arches, ["i686", "x86_64"]);
    }

    /// Frames `content` as a manifest file with a valid checksum, as an
    /// attacker able to compute BLAKE3 could.
    fn forge(content: Vec<u8>) -> Vec<u8> {
        let file = pb::ManifestFile {
            provenance: None,
            content_blake3: blake3::hash(&content).as_bytes().to_vec(),
            content,
        };
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        file.encode(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn crafted_path_expansion_is_refused_cheaply() {
        // Each entry reuses the whole previous path and adds one byte: a few
        // bytes on disk, quadratic in memory if decoded naively.
        let mut content = Vec::new();
        for i in 0..4000u32 {
            let entry = pb::Entry {
                shared_prefix: i,
                path_suffix: b"a".to_vec(),
                r#type: pb::EntryType::Dir as i32,
                ..pb::Entry::default()
            };
            message::encode(CONTENT_ENTRIES, &entry, &mut content);
        }
        let err = decode(&forge(content)).unwrap_err().to_string();
        assert!(err.contains("longer than 255"), "{err}");

        // Short components, deep paths: within PATH_MAX, caught by the budget.
        let mut content = Vec::new();
        let mut previous = 0u32;
        for i in 0..2040u32 {
            let suffix: &[u8] = if i == 0 { b"a" } else { b"/a" };
            let entry = pb::Entry {
                shared_prefix: previous,
                path_suffix: suffix.to_vec(),
                r#type: pb::EntryType::Dir as i32,
                ..pb::Entry::default()
            };
            previous += suffix.len() as u32;
            message::encode(CONTENT_ENTRIES, &entry, &mut content);
        }
        assert!(content.len() < 32 * 1024);
        let err = decode(&forge(content)).unwrap_err().to_string();
        assert!(err.contains("expand to more than"), "{err}");
    }

    #[test]
    fn unknown_fields_of_any_wire_type_are_skipped() {
        let mut content = encode(&sample()).bytes;
        let file = pb::ManifestFile::decode(&content[HEADER_LEN..]).unwrap();
        let mut inner = file.content.clone();
        // field 15 varint, field 14 fixed64: a newer writer's additions.
        prost::encoding::uint64::encode(15, &7, &mut inner);
        prost::encoding::fixed64::encode(14, &9, &mut inner);
        content = forge(inner);
        let decoded = decode(&content).unwrap();
        assert_eq!(decoded.manifest.entries.len(), 6);
    }

    #[test]
    fn rejects_newer_format() {
        let mut bytes = encode(&sample()).bytes;
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let err = decode(&bytes).unwrap_err();
        assert!(matches!(
            err,
            ManifestError::NewerVersion {
                found: 7,
                supported: 1
            }
        ));
        assert!(err.to_string().contains("upgrade"));
    }

    #[test]
    fn rejects_paths_escaping_the_root() {
        for bad in [&b"/etc"[..], b"a//b", b"../x", b"a/./b", b"a/\0"] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_path(b"etc/.hidden").is_ok());
    }

    #[test]
    fn front_coding_keeps_entries_small() {
        let mut manifest = Manifest::default();
        for i in 0..1000 {
            let mut e = Entry::new(
                format!("usr/lib/x86_64-linux-gnu/libfoo{i:04}.so").into_bytes(),
                EntryKind::File,
            );
            e.mode = 0o644;
            e.size = 40_000;
            e.blake3 = Some([i as u8; 32]);
            manifest.entries.push(e);
        }
        let per_entry = encode(&manifest).bytes.len() / 1000;
        assert!(per_entry < 60, "{per_entry} bytes per entry");
    }
}
