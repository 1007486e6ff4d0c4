//! Hashing one regular file, safely.
//!
//! The walk has already seen (via `lstat`) that the name is a regular file,
//! but a live host keeps changing under us. So the name is first opened
//! with `O_PATH | O_NOFOLLOW`, which opens nothing (no device driver runs,
//! no FIFO is connected, no symlink is followed), and that handle is checked
//! to be the very regular file the walk saw. Only then is that same inode
//! opened for reading, through `/proc/self/fd`, with `O_NOATIME` where
//! permitted (verifying must not disturb access times that the workload or
//! an investigator rely on). Without /proc the name is opened directly with
//! `O_NOFOLLOW | O_NONBLOCK` and checked after the fact.
//!
//! Metadata is compared before and after reading, and no more than the
//! file's size (plus one byte, to notice growth) is read: a file that
//! changed while it was read is read again, and reported if it never holds
//! still; a file that reports a false size cannot hold a worker forever.
//!
//! Reads go through a caller-owned buffer (one per worker thread), never
//! `mmap`: a file truncated while mapped would kill the agent with SIGBUS.
//!
//! A long-lived agent may pace its reads ([`ReadControl::limit`], shared by
//! every worker) and may be told to stop mid-file ([`ReadControl::cancel`]);
//! with neither set, reading costs one branch per buffer more than before.

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{Mode, OFlags};
use rustix::io::Errno;

use crate::scan::Meta;
use crate::throttle::ReadLimit;

/// How many times a file that changes while it is read is read again.
const ATTEMPTS: usize = 3;

/// The buffer size the scanner gives each worker. Large enough for BLAKE3's
/// SIMD paths and to keep syscalls per byte low, small enough to be cheap per
/// thread.
pub const BUFFER_SIZE: usize = 256 * 1024;

/// What paces and stops reading, shared by every scan worker. The default
/// reads at full speed and never stops.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadControl<'a> {
    /// The cap on bytes read per second, for all workers together.
    pub limit: Option<&'a ReadLimit>,
    /// Set when the scan is abandoned: reading stops at the next buffer.
    pub cancel: Option<&'a AtomicBool>,
}

impl ReadControl<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.is_some_and(|c| c.load(Ordering::Relaxed))
    }

    /// Accounts for `bytes` read; false once the scan is cancelled.
    fn pace(&self, bytes: u64) -> bool {
        match self.limit {
            Some(limit) => limit.consume(bytes, self.cancel).is_ok(),
            None => !self.cancelled(),
        }
    }
}

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
    /// The name no longer refers to the regular file the walk saw: the
    /// caller records what it is now instead.
    #[error("replaced during scan")]
    Replaced,
    #[error("kept changing while being read ({ATTEMPTS} attempts)")]
    KeptChanging,
    /// The scan was cancelled while this file was being read.
    #[error("scan cancelled")]
    Cancelled,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Hashes the regular file `name` in the open directory `dir`. `seen` is
/// what the walk's `lstat` reported; only that same inode is read.
pub fn hash_file<Fd: AsFd>(
    dir: Fd,
    name: &CStr,
    seen: &Meta,
    buf: &mut [u8],
    control: ReadControl<'_>,
) -> Result<Hashed, HashError> {
    let dir = dir.as_fd();
    for _ in 0..ATTEMPTS {
        let file = open_checked(dir, name, seen)?;
        let before = Meta::from_stat(&rustix::fs::fstat(&file).map_err(io::Error::from)?);
        if !is_seen_file(&before, seen) {
            return Err(HashError::Replaced);
        }
        let (blake3, bytes_read) = hash_open_file(&file, buf, before.size, control)?;
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

fn is_seen_file(now: &Meta, seen: &Meta) -> bool {
    now.is_regular() && (now.dev, now.ino) == (seen.dev, seen.ino)
}

/// Hashes at most `size + 1` bytes: one more than expected proves the file
/// grew (the caller sees the count differ from the size and reads again).
fn hash_open_file(
    file: &File,
    buf: &mut [u8],
    size: u64,
    control: ReadControl<'_>,
) -> Result<([u8; 32], u64), HashError> {
    let mut hasher = blake3::Hasher::new();
    let mut total: u64 = 0;
    let mut limited = file.take(size.saturating_add(1));
    loop {
        match limited.read(buf) {
            Ok(0) => break,
            Ok(n) => {
                hasher.update(&buf[..n]);
                total = total.saturating_add(n as u64);
                if !control.pace(n as u64) {
                    return Err(HashError::Cancelled);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok((*hasher.finalize().as_bytes(), total))
}

/// Opens `name` for reading only once it is known to be the regular file
/// the walk saw.
fn open_checked(dir: BorrowedFd<'_>, name: &CStr, seen: &Meta) -> Result<File, HashError> {
    let handle = match rustix::fs::openat(
        dir,
        name,
        OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(handle) => handle,
        Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Err(HashError::Vanished),
        Err(e) => return Err(HashError::Io(e.into())),
    };
    let now = Meta::from_stat(&rustix::fs::fstat(&handle).map_err(io::Error::from)?);
    if !is_seen_file(&now, seen) {
        return Err(HashError::Replaced);
    }
    let reopen = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let flags = OFlags::RDONLY | OFlags::NOCTTY | OFlags::CLOEXEC;
    let opened = match rustix::fs::open(reopen.as_str(), flags | OFlags::NOATIME, Mode::empty()) {
        // O_NOATIME needs ownership or CAP_FOWNER; without it, open plainly.
        Err(Errno::PERM) => rustix::fs::open(reopen.as_str(), flags, Mode::empty()),
        other => other,
    };
    match opened {
        Ok(fd) => Ok(File::from(fd)),
        // No /proc (a minimal chroot or container): open the name itself.
        Err(Errno::NOENT) => open_directly(dir, name),
        Err(e) => Err(HashError::Io(e.into())),
    }
}

/// Opens the name itself, never following a symlink and never blocking on
/// a FIFO; the caller checks the inode again after opening.
fn open_directly(dir: BorrowedFd<'_>, name: &CStr) -> Result<File, HashError> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let opened = match rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty()) {
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

/// The `security.capability` xattr of `name` in the open directory `dir`,
/// not following symlinks. There is no `*at` form of getxattr on older
/// kernels, so the directory is named through `/proc/self/fd` (which
/// resolves to the open directory itself, not to a path that could have
/// been swapped); `fallback` is used only where /proc is missing.
pub fn read_capability_in<Fd: AsFd>(
    dir: Fd,
    name: &CStr,
    fallback: &Path,
) -> io::Result<Option<Box<[u8]>>> {
    let mut through_fd = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    through_fd.extend_from_slice(name.to_bytes());
    match read_capability_at(Path::new(OsStr::from_bytes(&through_fd))) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !Path::new("/proc/self/fd").exists() => {
            read_capability_at(fallback)
        }
        other => other,
    }
}

/// The `security.capability` xattr of a path, not following symlinks.
fn read_capability_at(path: &Path) -> io::Result<Option<Box<[u8]>>> {
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
        hash_file(&dir, &name, seen, buf, ReadControl::default())
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
        let seen = meta_of(&path);
        // Keep the old inode alive so the new file cannot reuse its number.
        std::fs::hard_link(&path, dir.path().join("old")).unwrap();
        std::fs::write(dir.path().join("new"), b"x").unwrap();
        std::fs::rename(dir.path().join("new"), &path).unwrap();
        assert_ne!(meta_of(&path).ino, seen.ino);
        assert!(matches!(
            hash_path(&path, &seen, &mut buf),
            Err(HashError::Replaced)
        ));
    }
}
