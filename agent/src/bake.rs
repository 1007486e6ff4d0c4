//! Bake: record what an image contains, at image-build time.

use std::io::Write;
use std::path::Path;

use driftwatch_proto::manifest::codec::{self, Encoded};
use driftwatch_proto::{Manifest, Provenance};

use crate::packages;
use crate::policy::Policy;
use crate::scan::{self, Scan, ScanError, ScanOptions};

/// Why a bake failed.
#[derive(Debug, thiserror::Error)]
pub enum BakeError {
    #[error(transparent)]
    Scan(#[from] ScanError),
    #[error("cannot write manifest {path}: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// What bake produced.
#[derive(Debug)]
pub struct Baked {
    pub manifest: Manifest,
    pub encoded: Encoded,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
}

/// Scans `root` with content hashing and reads its package databases.
/// Provenance is recorded as given; it is not part of the digest.
pub fn bake(
    root: &Path,
    policy: &Policy,
    provenance: Provenance,
    options: &ScanOptions,
) -> Result<Baked, BakeError> {
    let options = ScanOptions {
        // A manifest without content hashes could never catch a change that
        // restores size and mtime, so bake always hashes.
        content: scan::ContentMode::Hash,
        ..options.clone()
    };
    let Scan {
        entries,
        mut unverified,
        files_hashed,
        bytes_hashed,
    } = scan::scan(root, policy, &options)?;
    let packages = packages::read_installed(root);
    unverified.extend(packages.problems);
    let manifest = Manifest {
        provenance,
        policy: policy.spec().clone(),
        entries,
        packages: packages.packages,
        package_databases: packages.databases,
        unverified,
    };
    let encoded = codec::encode(&manifest);
    Ok(Baked {
        manifest,
        encoded,
        files_hashed,
        bytes_hashed,
    })
}

/// Writes a manifest atomically: a crash mid-write leaves the old file (or
/// none), never a truncated manifest.
pub fn write_manifest(path: &Path, bytes: &[u8]) -> Result<(), BakeError> {
    let fail = |source| BakeError::Write {
        path: path.display().to_string(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".tmp.{}", std::process::id()));
    let tmp = dir.join(name);
    let result = (|| {
        // create_new (O_EXCL) never follows a symlink planted at the
        // temporary name, nor truncates a file someone else made there.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(fail)
}

/// Reads and decodes a manifest file.
pub fn read_manifest(path: &Path) -> Result<codec::Decoded, ReadManifestError> {
    let bytes = std::fs::read(path).map_err(|source| ReadManifestError::Read {
        path: path.display().to_string(),
        source,
    })?;
    codec::decode(&bytes).map_err(|source| ReadManifestError::Decode {
        path: path.display().to_string(),
        source,
    })
}

/// Why a manifest file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ReadManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Decode {
        path: String,
        source: codec::ManifestError,
    },
}
