//! Hashing one regular file, safely.
//!
//! The walk has already seen (via `lstat`) that the path is a regular file,
//! but a live host keeps changing under us, so the file is opened with
//! `O_NOFOLLOW` (a path swapped for a symlink is never followed),
//! `O_NONBLOCK` (a path swapped for a FIFO never blocks the scan) and
//! `O_NOATIME` where permitted (verifying must not disturb access times that
//! the workload or an investigator may rely on). The open file is checked to
//! be the same regular file the walk saw, and its metadata is compared
//! before and after reading: a file that changed while it was read is read
//! again, and reported if it never holds still.
//!
//! Reads go through a caller-owned buffer (one per worker thread), never
//! `mmap`: a file truncated while mapped would kill the agent with SIGBUS.

use std::ffi::CStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::scan::Meta;

/// How many times a file that changes while it is read is read again.
const ATTEMPTS: usize = 3;

/// The buffer size the scanner gives each worker. Large enough for BLAKE3's
/// SIMD paths and to keep syscalls per byte low, small enough to be cheap per
/// thread.
pub const BUFFER_SIZE: usize = 256 * 1024;

/// A file's content hash and the metadata of what was actually read.
#[derive(Debug, Clone)]
pub struct Hashed {
    pub blake3: [u8; 32],
    pub meta: Meta,
    /// The raw `security.capability` xattr, read from the same open file.
    pub capability: Option<Box<[u8]>>,
}

/// Why a file could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("vanished during scan")]
    Vanished,
    /// The path no longer names a regular file: the caller records what it
    /// is now instead.
    #[error("replaced during scan")]
    Replaced,
    #[error("kept changing while being read ({ATTEMPTS} attempts)")]
    KeptChanging,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Hashes the regular file `name` in the open directory `dir`. `seen` is
/// what the walk's `lstat` reported; the open file must be that same inode.
pub fn hash_file<Fd: AsFd>(
    dir: Fd,
    name: &CStr,
    seen: &Meta,
    buf: &mut [u8],
) -> Result<Hashed, HashError> {
    let dir = dir.as_fd();
    for _ in 0..ATTEMPTS {
        let file = open_no_side_effects(dir, name)?;
        let before = Meta::from_stat(&rustix::fs::fstat(&file).map_err(io::Error::from)?);
        if !before.is_regular() || before.dev != seen.dev || before.ino != seen.ino {
            return Err(HashError::Replaced);
        }
        let (blake3, bytes_read) = hash_open_file(&file, buf)?;
        let after = Meta::from_stat(&rustix::fs::fstat(&file).map_err(io::Error::from)?);
        if after.same_content_stamp(&before) && bytes_read == after.size {
            let capability = read_capability(&file)?;
            return Ok(Hashed {
                blake3,
                meta: after,
                capability,
            });
        }
    }
    Err(HashError::KeptChanging)
}

fn hash_open_file(mut file: &File, buf: &mut [u8]) -> io::Result<([u8; 32], u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut total: u64 = 0;
    loop {
        match file.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total = total.saturating_add(n as u64);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok((*hasher.finalize().as_bytes(), total))
}

fn open_no_side_effects(dir: BorrowedFd<'_>, name: &CStr) -> Result<File, HashError> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let opened = match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME needs ownership or CAP_FOWNER; without it, open plainly.
        Err(Errno::PERM) => rustix::fs::openat(dir, name, flags, Mode::empty()),
        other => other,
    };
    match opened {
        Ok(fd) => Ok(File::from(fd)),
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => Err(HashError::Vanished),
        // ELOOP: now a symlink. ENXIO: now a socket.
        Err(Errno::LOOP) | Err(Errno::NXIO) => Err(HashError::Replaced),
        Err(e) => Err(HashError::Io(e.into())),
    }
}

const CAPABILITY_XATTR: &str = "security.capability";

/// The `security.capability` xattr of an open file, if it has one.
pub fn read_capability<Fd: AsFd>(fd: Fd) -> io::Result<Option<Box<[u8]>>> {
    let mut value = [0u8; 64];
    match rustix::fs::fgetxattr(fd, CAPABILITY_XATTR, &mut value) {
        Ok(n) => Ok(Some(value[..n].into())),
        Err(e) if no_capability(e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The `security.capability` xattr of a path, not following symlinks.
pub fn read_capability_at(path: &Path) -> io::Result<Option<Box<[u8]>>> {
    let mut value = [0u8; 64];
    match rustix::fs::lgetxattr(path, CAPABILITY_XATTR, &mut value) {
        Ok(n) => Ok(Some(value[..n].into())),
        Err(e) if no_capability(e) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// "No such attribute" and "this file system has no xattrs" both mean the
/// file carries no capabilities.
fn no_capability(e: Errno) -> bool {
    e == Errno::NODATA || e == Errno::NOTSUP || e == Errno::OPNOTSUPP
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn meta_of(path: &Path) -> Meta {
        Meta::from_stat(&rustix::fs::lstat(path).unwrap())
    }

    /// Hashes `path` the way the scanner does: relative to its directory.
    fn hash_path(path: &Path, seen: &Meta, buf: &mut [u8]) -> Result<Hashed, HashError> {
        let dir = File::open(path.parent().unwrap()).unwrap();
        let name = std::ffi::CString::new(path.file_name().unwrap().as_encoded_bytes()).unwrap();
        hash_file(&dir, &name, seen, buf)
    }

    #[test]
    fn hashes_like_blake3_reference() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut buf = vec![0; BUFFER_SIZE];
        let hashed = hash_path(&path, &meta_of(&path), &mut buf).unwrap();
        assert_eq!(hashed.blake3, *blake3::hash(&data).as_bytes());
        assert_eq!(hashed.meta.size, data.len() as u64);
        assert_eq!(hashed.capability, None);
    }

    #[test]
    fn sparse_file_hashes_as_its_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let file = File::create(&path).unwrap();
        file.set_len(64 * 1024 * 1024).unwrap();
        (&file).write_all(b"tail").unwrap();
        let mut buf = vec![0; BUFFER_SIZE];
        let hashed = hash_path(&path, &meta_of(&path), &mut buf).unwrap();
        let mut reference = blake3::Hasher::new();
        reference.update(b"tail");
        reference.update(&vec![0u8; 64 * 1024 * 1024 - 4]);
        assert_eq!(hashed.blake3, *reference.finalize().as_bytes());
    }

    #[test]
    fn swapped_paths_are_reported_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let seen = meta_of(&path);
        let mut buf = vec![0; 16];
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            hash_path(&path, &seen, &mut buf),
            Err(HashError::Vanished)
        ));
        std::os::unix::fs::symlink("/etc/passwd", &path).unwrap();
        assert!(matches!(
            hash_path(&path, &seen, &mut buf),
            Err(HashError::Replaced)
        ));
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"x").unwrap();
        // A new file at the same path is a different inode.
        let fresh = meta_of(&path);
        if fresh.ino != seen.ino {
            assert!(matches!(
                hash_path(&path, &seen, &mut buf),
                Err(HashError::Replaced)
            ));
        }
    }
}
