//! The image manifest as domain types.
//!
//! A [`Manifest`] is what `bake` records and what `verify` compares against.
//! These types are what the rest of driftwatch uses; the protobuf types in
//! [`crate::pb`] appear only in [`codec`], which converts between the two and
//! validates everything it decodes (a manifest may come from a hostile host).

pub mod codec;

use std::fmt;

/// The BLAKE3 digest of a manifest's canonical content (see [`codec`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lower-case hex, as printed by `bake` and shown by every report.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.to_hex())
    }
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Everything an image contained when it was built.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Manifest {
    /// Who built the image, from what, and when. Not part of the digest.
    pub provenance: Provenance,
    /// The exclusions and runtime zones in force when the manifest was baked.
    pub policy: PolicySpec,
    /// Every file-system entry under the root, sorted by path bytes.
    pub entries: Vec<Entry>,
    /// The installed packages, sorted by (manager, name, architecture).
    pub packages: Vec<Package>,
    /// The package databases that were found and read.
    pub package_databases: Vec<PackageDatabase>,
    /// What bake could not record fully, with the reason.
    pub unverified: Vec<Unverified>,
}

/// Who built the image, from what, and when.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Provenance {
    pub image_id: String,
    pub image_version: String,
    pub source_commit: String,
    /// Seconds since the Unix epoch.
    pub build_time_unix: i64,
    /// The driftwatch version that baked the manifest.
    pub tool_version: String,
}

/// The policy as recorded in a manifest: the patterns, already validated.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PolicySpec {
    /// Glob patterns never walked.
    pub exclude: Vec<String>,
    /// Glob patterns whose changes are expected at run time and not drift.
    pub runtime_zones: Vec<String>,
}

/// The type of a file-system entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl EntryKind {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "char_device",
            EntryKind::BlockDevice => "block_device",
        }
    }
}

impl fmt::Display for EntryKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file-system entry: a path and everything recorded about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the root, '/'-separated, raw bytes; the root is empty.
    pub path: Box<[u8]>,
    pub kind: EntryKind,
    /// `st_mode & 0o7777`: permissions plus setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// BLAKE3 of a regular file's content; `None` if it was not read.
    pub blake3: Option<[u8; 32]>,
    /// Where a symlink points, as stored (never followed).
    pub symlink_target: Option<Box<[u8]>>,
    /// Major and minor numbers of a character or block device.
    pub device: Option<(u32, u32)>,
    /// The raw `security.capability` extended attribute.
    pub capability: Option<Box<[u8]>>,
    /// Non-zero for hard-linked entries; entries sharing an inode share it.
    pub hardlink_group: u32,
}

impl Entry {
    /// An entry with only a path and a type; the rest zero.
    pub fn new(path: impl Into<Box<[u8]>>, kind: EntryKind) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime_sec: 0,
            mtime_nsec: 0,
            blake3: None,
            symlink_target: None,
            device: None,
            capability: None,
            hardlink_group: 0,
        }
    }
}

/// A package manager whose database driftwatch reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PackageManager {
    Dpkg,
    Apk,
    Rpm,
}

impl PackageManager {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageManager::Dpkg => "dpkg",
            PackageManager::Apk => "apk",
            PackageManager::Rpm => "rpm",
        }
    }
}

impl fmt::Display for PackageManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One installed package.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Package {
    pub manager: PackageManager,
    pub name: String,
    pub version: String,
    pub architecture: String,
}

impl Package {
    /// What identifies a package across versions: an upgrade keeps the key.
    pub fn key(&self) -> (PackageManager, &str, &str) {
        (self.manager, &self.name, &self.architecture)
    }
}

/// A package database that was found and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageDatabase {
    pub manager: PackageManager,
    /// Relative to the root, e.g. `var/lib/dpkg/status`.
    pub path: String,
    pub package_count: u32,
}

/// A path that could not be fully recorded or checked, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Unverified {
    pub path: Box<[u8]>,
    pub reason: String,
}
