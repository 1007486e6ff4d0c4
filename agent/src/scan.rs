//! The parallel walk that records every entry under a root.
//!
//! Worker threads share one LIFO job stack holding two kinds of work: list
//! a directory, or hash a file. Listing pushes the directory's files and
//! subdirectories as jobs, so a directory with thousands of large files is
//! hashed by every worker at once instead of by the one that listed it, and
//! LIFO order keeps the walk depth-first. Each worker keeps its own results
//! (no shared state besides the stack) and they are merged and sorted at the
//! end, which is what makes the output independent of thread timing.
//!
//! Symlinks are recorded, never followed, so loops and links leaving the
//! root are harmless. FIFOs, sockets and devices are recorded from `lstat`
//! and never opened. Anything that cannot be listed, stat'ed or read is
//! recorded in [`Scan::unverified`] with the reason; nothing is dropped in
//! silence.

use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use driftwatch_proto::{Entry, EntryKind, Unverified};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use crate::hash::{self, HashError, ReadControl};
use crate::policy::Policy;
use crate::throttle::ReadLimit;

/// The metadata the scan uses, from one `lstat` or `fstat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    pub dev: u64,
    pub ino: u64,
    pub nlink: u64,
    pub rdev: u64,
}

impl Meta {
    #[allow(clippy::unnecessary_cast, clippy::useless_conversion)]
    pub fn from_stat(st: &Stat) -> Meta {
        let kind = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::RegularFile => EntryKind::File,
            FileType::Directory => EntryKind::Dir,
            FileType::Symlink => EntryKind::Symlink,
            FileType::Fifo => EntryKind::Fifo,
            FileType::Socket => EntryKind::Socket,
            FileType::CharacterDevice => EntryKind::CharDevice,
            FileType::BlockDevice => EntryKind::BlockDevice,
            // The kernel reports only the types above; treat anything else
            // as the most opaque type so it is never opened.
            FileType::Unknown => EntryKind::Socket,
        };
        Meta {
            kind,
            mode: (st.st_mode as u32) & 0o7777,
            uid: st.st_uid as u32,
            gid: st.st_gid as u32,
            size: u64::try_from(st.st_size).unwrap_or(0),
            mtime_sec: st.st_mtime as i64,
            mtime_nsec: st.st_mtime_nsec as u32,
            ctime_sec: st.st_ctime as i64,
            ctime_nsec: st.st_ctime_nsec as u32,
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            nlink: st.st_nlink as u64,
            rdev: st.st_rdev as u64,
        }
    }

    pub fn is_regular(&self) -> bool {
        self.kind == EntryKind::File
    }

    /// Same size, mtime and ctime: nothing wrote to the file in between.
    /// (ctime catches writes that restore mtime.)
    pub fn same_content_stamp(&self, other: &Meta) -> bool {
        self.size == other.size
            && (self.mtime_sec, self.mtime_nsec) == (other.mtime_sec, other.mtime_nsec)
            && (self.ctime_sec, self.ctime_nsec) == (other.ctime_sec, other.ctime_nsec)
    }

    /// An entry carrying this metadata; type-specific fields left empty.
    fn to_entry(self, path: Vec<u8>) -> Entry {
        let mut entry = Entry::new(path, self.kind);
        entry.mode = self.mode;
        entry.uid = self.uid;
        entry.gid = self.gid;
        // A directory's size is file-system bookkeeping, not content; keeping
        // it would report drift whenever a directory grows and shrinks back.
        entry.size = if self.kind == EntryKind::Dir {
            0
        } else {
            self.size
        };
        entry.mtime_sec = self.mtime_sec;
        entry.mtime_nsec = self.mtime_nsec;
        if matches!(self.kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
            entry.device = Some((
                rustix::fs::major(self.rdev as _),
                rustix::fs::minor(self.rdev as _),
            ));
        }
        entry
    }
}

/// Whether file content is hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentMode {
    /// Hash every regular file (the default, and what bake always does).
    Hash,
    /// Record metadata only: much faster, blind to changes that keep size
    /// and mtime.
    MetadataOnly,
}

/// How to scan.
#[derive(Debug, Clone)]
pub struct ScanOptions {
    /// Worker threads. More than the core count helps on a cold page cache,
    /// where workers wait on the disk.
    pub threads: usize,
    pub content: ContentMode,
    /// Do not descend into directories on another file system than the
    /// root's; each such mount point is reported as not verified.
    pub one_file_system: bool,
    /// A cap on content bytes read per second, shared by all threads, so a
    /// long-lived agent is not felt by the workload. `None`: full speed.
    pub read_limit: Option<Arc<ReadLimit>>,
    /// Set to abandon the scan: workers stop at the next job (or buffer)
    /// and the scan returns [`ScanError::Cancelled`], never a partial
    /// result that could pass for a complete one.
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            threads: default_threads(),
            content: ContentMode::Hash,
            one_file_system: false,
            read_limit: None,
            cancel: None,
        }
    }
}

impl ScanOptions {
    fn cancelled(&self) -> bool {
        self.cancel
            .as_deref()
            .is_some_and(|c| c.load(Ordering::Relaxed))
    }

    fn read_control(&self) -> ReadControl<'_> {
        ReadControl {
            limit: self.read_limit.as_deref(),
            cancel: self.cancel.as_deref(),
        }
    }
}

/// Four reads in flight per core: enough to keep a cold disk busy (a probe
/// on a 2-core machine: 8 threads 5.2 s against 2 threads 7.2 s), and cheap
/// when the page cache is warm.
pub fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cores * 4).clamp(2, 32)
}

/// Why a root could not be scanned at all.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("root {path}: {source}")]
    Root { path: PathBuf, source: io::Error },
    #[error("root {0} is not a directory")]
    RootNotDir(PathBuf),
    #[error("cannot start scan thread: {0}")]
    Thread(io::Error),
    #[error("a scan worker failed unexpectedly (a bug); the scan was abandoned")]
    WorkerPanicked,
    #[error("the scan was cancelled")]
    Cancelled,
}

/// The identity of an inode with more than one link: (device, inode).
pub type LinkId = (u64, u64);

/// Receives what one worker finds. Every worker has its own visitor, so a
/// visitor needs no locks; the caller combines them when the walk is done.
pub trait Visitor: Send {
    /// A recorded entry; `link` is set when the inode has other links.
    /// `complete` is false when part of it could not be read (its content,
    /// target or capabilities; the path is also reported as unverified):
    /// fields left empty then mean "unknown", not "none".
    fn entry(&mut self, entry: Entry, link: Option<LinkId>, complete: bool);
    /// A path that could not be fully recorded. For a directory, everything
    /// below it is unrecorded too.
    fn unverified(&mut self, path: Vec<u8>, reason: String);
}

/// Totals over all workers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub files_hashed: u64,
    pub bytes_hashed: u64,
}

/// Everything a scan found, collected and sorted.
#[derive(Debug, Default)]
pub struct Scan {
    /// Sorted by path, with hard-link groups assigned.
    pub entries: Vec<Entry>,
    /// Paths that could not be fully recorded, sorted. For a directory that
    /// could not be listed (or was not entered), everything below it is
    /// unverified too.
    pub unverified: Vec<Unverified>,
    pub files_hashed: u64,
    pub bytes_hashed: u64,
}

/// Collects entries for [`scan`].
#[derive(Default)]
struct Collect {
    entries: Vec<Entry>,
    /// Only entries with other links, so the common case costs nothing.
    links: Vec<(Box<[u8]>, LinkId)>,
    unverified: Vec<Unverified>,
}

impl Visitor for Collect {
    fn entry(&mut self, entry: Entry, link: Option<LinkId>, _complete: bool) {
        if let Some(link) = link {
            self.links.push((entry.path.clone(), link));
        }
        self.entries.push(entry);
    }

    fn unverified(&mut self, path: Vec<u8>, reason: String) {
        self.unverified.push(Unverified {
            path: path.into(),
            reason,
        });
    }
}

/// Scans `root`, skipping what `policy` excludes, and returns every entry
/// sorted by path.
pub fn scan(root: &Path, policy: &Policy, options: &ScanOptions) -> Result<Scan, ScanError> {
    let (visitors, totals) = scan_with(root, policy, options, Collect::default)?;
    let mut visitors = visitors.into_iter();
    let mut all = visitors.next().unwrap_or_default();
    for v in visitors {
        all.entries.extend(v.entries);
        all.links.extend(v.links);
        all.unverified.extend(v.unverified);
    }
    all.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    all.entries.shrink_to_fit();
    assign_hardlink_groups(&mut all.entries, all.links);
    all.unverified.sort();
    Ok(Scan {
        entries: all.entries,
        unverified: all.unverified,
        files_hashed: totals.files_hashed,
        bytes_hashed: totals.bytes_hashed,
    })
}

/// Walks `root` with one visitor per worker thread (made by `new_visitor`)
/// and returns the visitors, in no particular order, with the totals. The
/// root's own entry goes to the first visitor.
pub fn scan_with<V: Visitor>(
    root: &Path,
    policy: &Policy,
    options: &ScanOptions,
    mut new_visitor: impl FnMut() -> V,
) -> Result<(Vec<V>, Totals), ScanError> {
    let root = std::fs::canonicalize(root).map_err(|source| ScanError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let root_meta = rustix::fs::lstat(&root)
        .map(|st| Meta::from_stat(&st))
        .map_err(|e| ScanError::Root {
            path: root.clone(),
            source: e.into(),
        })?;
    if root_meta.kind != EntryKind::Dir {
        return Err(ScanError::RootNotDir(root));
    }
    // Fail on an unreadable root now, rather than report one unverified
    // entry and a manifest with nothing in it. Everything below is opened
    // relative to this descriptor, never by path.
    let root_fd = rustix::fs::open(&root, DIR_FLAGS, Mode::empty())
        .and_then(|fd| Dir::read_from(&fd).map(|_| fd))
        .map_err(|e| ScanError::Root {
            path: root.clone(),
            source: e.into(),
        })?;

    let walker = Walker {
        root: &root,
        root_dev: root_meta.dev,
        policy,
        options,
        queue: Mutex::new(QueueState {
            jobs: vec![Job::Dir {
                parent: Arc::new(root_fd),
                name: None,
                path: Vec::new(),
                seen: root_meta,
            }],
            busy: 0,
            aborted: false,
        }),
        wake: Condvar::new(),
    };
    let threads = options.threads.max(1);
    let mut visitors: Vec<V> = (0..threads).map(|_| new_visitor()).collect();
    visitors[0].entry(root_meta.to_entry(Vec::new()), None, true);
    let totals = std::thread::scope(|s| {
        let mut handles = Vec::with_capacity(threads);
        for (i, visitor) in visitors.iter_mut().enumerate() {
            let walker = &walker;
            let handle = std::thread::Builder::new()
                .name(format!("scan-{i}"))
                .spawn_scoped(s, move || walker.work(visitor))
                .map_err(ScanError::Thread)?;
            handles.push(handle);
        }
        let mut totals = Totals::default();
        let mut panicked = false;
        for handle in handles {
            match handle.join() {
                Ok(t) => {
                    totals.files_hashed += t.files_hashed;
                    totals.bytes_hashed += t.bytes_hashed;
                }
                Err(_) => panicked = true,
            }
        }
        if panicked {
            return Err(ScanError::WorkerPanicked);
        }
        if options.cancelled() {
            return Err(ScanError::Cancelled);
        }
        Ok::<_, ScanError>(totals)
    })?;
    Ok((visitors, totals))
}

/// Entries sharing an inode get the same group number; groups are numbered
/// in path order so the numbering depends only on the tree. An inode seen
/// once (its other links are excluded or outside the root) is no group.
/// `entries` must be sorted by path.
pub fn assign_hardlink_groups(entries: &mut [Entry], links: Vec<(Box<[u8]>, LinkId)>) {
    for (number, group) in link_groups(links).into_iter().enumerate() {
        let number = u32::try_from(number + 1).unwrap_or(u32::MAX);
        for path in group {
            if let Ok(index) = entries.binary_search_by(|e| e.path.cmp(&path)) {
                entries[index].hardlink_group = number;
            }
        }
    }
}

/// The paths seen under one inode, for every inode seen under more than
/// one name: each group sorted, groups ordered by their first path.
pub fn link_groups(links: Vec<(Box<[u8]>, LinkId)>) -> Vec<Vec<Box<[u8]>>> {
    let mut by_inode: HashMap<LinkId, Vec<Box<[u8]>>> = HashMap::new();
    for (path, id) in links {
        by_inode.entry(id).or_default().push(path);
    }
    let mut groups: Vec<Vec<Box<[u8]>>> = by_inode
        .into_values()
        .filter(|m| m.len() > 1)
        .map(|mut m| {
            m.sort_unstable();
            m
        })
        .collect();
    groups.sort_unstable_by(|a, b| a[0].cmp(&b[0]));
    groups
}

/// How directories are opened: never through a symlink.
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

enum Job {
    /// List a directory: opened relative to its parent's descriptor (the
    /// root's job has no name and reuses the root descriptor), and checked
    /// to be the inode the parent's listing saw.
    Dir {
        parent: Arc<OwnedFd>,
        name: Option<CString>,
        path: Vec<u8>,
        seen: Meta,
    },
    /// Hash a regular file: its directory (kept open, so the file is opened
    /// relative to it), its name, its relative path, and what `lstat` saw.
    File {
        dir: Arc<OwnedFd>,
        name: CString,
        path: Vec<u8>,
        seen: Meta,
    },
}

struct QueueState {
    jobs: Vec<Job>,
    /// Workers holding a job; when zero and no jobs remain, the walk is done.
    busy: usize,
    /// A worker panicked: the others stop instead of waiting for its jobs.
    aborted: bool,
}

struct Walker<'a> {
    root: &'a Path,
    root_dev: u64,
    policy: &'a Policy,
    options: &'a ScanOptions,
    queue: Mutex<QueueState>,
    wake: Condvar,
}

/// Set while a worker runs: if it unwinds, the walk is abandoned rather
/// than left waiting forever for the jobs the worker held.
struct AbortOnPanic<'w, 'a>(&'w Walker<'a>);

impl Drop for AbortOnPanic<'_, '_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut state) = self.0.queue.lock() {
                state.aborted = true;
            }
            self.0.wake.notify_all();
        }
    }
}

/// One worker's view: its visitor and its counters.
struct Worker<'v, V> {
    visitor: &'v mut V,
    totals: Totals,
}

impl<V: Visitor> Worker<'_, V> {
    fn unverified(&mut self, path: Vec<u8>, reason: impl Into<String>) {
        self.visitor.unverified(path, reason.into());
    }

    fn record(&mut self, entry: Entry, meta: &Meta) {
        self.record_as(entry, meta, true);
    }

    /// Records an entry of which some part could not be read (the caller
    /// has reported the path as unverified).
    fn record_incomplete(&mut self, entry: Entry, meta: &Meta) {
        self.record_as(entry, meta, false);
    }

    fn record_as(&mut self, entry: Entry, meta: &Meta, complete: bool) {
        let link = (meta.kind != EntryKind::Dir && meta.nlink > 1).then_some((meta.dev, meta.ino));
        self.visitor.entry(entry, link, complete);
    }
}

impl Walker<'_> {
    fn work<V: Visitor>(&self, visitor: &mut V) -> Totals {
        let _abort_on_panic = AbortOnPanic(self);
        let mut out = Worker {
            visitor,
            totals: Totals::default(),
        };
        let mut buf = match self.options.content {
            ContentMode::Hash => vec![0u8; hash::BUFFER_SIZE],
            ContentMode::MetadataOnly => Vec::new(),
        };
        let mut new_jobs = Vec::new();
        while let Some(job) = self.next_job() {
            match job {
                Job::Dir {
                    parent,
                    name,
                    path,
                    seen,
                } => self.list_dir(
                    &parent,
                    name.as_deref(),
                    path,
                    seen,
                    &mut new_jobs,
                    &mut out,
                ),
                Job::File {
                    dir,
                    name,
                    path,
                    seen,
                } => self.hash_file(&dir, &name, path, seen, &mut buf, &mut out),
            }
            self.finish_job(&mut new_jobs);
        }
        out.totals
    }

    fn next_job(&self) -> Option<Job> {
        let mut state = self.queue.lock().expect("scan queue poisoned");
        loop {
            if state.aborted || self.options.cancelled() {
                return None;
            }
            if let Some(job) = state.jobs.pop() {
                state.busy += 1;
                return Some(job);
            }
            if state.busy == 0 {
                return None;
            }
            state = self.wake.wait(state).expect("scan queue poisoned");
        }
    }

    fn finish_job(&self, new_jobs: &mut Vec<Job>) {
        let mut state = self.queue.lock().expect("scan queue poisoned");
        state.busy -= 1;
        let pushed = new_jobs.len();
        state.jobs.append(new_jobs);
        let done = state.busy == 0 && state.jobs.is_empty();
        drop(state);
        if done || pushed > 1 {
            self.wake.notify_all();
        } else if pushed == 1 {
            self.wake.notify_one();
        }
    }

    fn absolute(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.to_path_buf()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    /// Lists a directory through an open descriptor: every child is
    /// stat'ed, read and opened relative to it, and the directory itself is
    /// opened relative to its parent's descriptor with `O_NOFOLLOW`. So no
    /// path is resolved again after it was listed, and a directory swapped
    /// for a symlink (or another directory) mid-scan is reported, never
    /// followed.
    fn list_dir<V: Visitor>(
        &self,
        parent: &Arc<OwnedFd>,
        name: Option<&CStr>,
        dir: Vec<u8>,
        seen: Meta,
        jobs: &mut Vec<Job>,
        out: &mut Worker<'_, V>,
    ) {
        let opened = match name {
            Some(name) => rustix::fs::openat(&**parent, name, DIR_FLAGS, Mode::empty()),
            None => rustix::io::dup(&**parent),
        };
        let fd = match opened {
            Ok(fd) => Arc::new(fd),
            Err(Errno::NOENT) => return out.unverified(dir, "vanished during scan"),
            Err(Errno::NOTDIR) | Err(Errno::LOOP) => {
                return out.unverified(dir, "replaced during scan; not entered");
            }
            Err(e) => {
                return out.unverified(
                    dir,
                    format!("cannot list directory: {}", io::Error::from(e)),
                );
            }
        };
        match rustix::fs::fstat(&*fd).map(|st| Meta::from_stat(&st)) {
            Ok(now) if (now.dev, now.ino) == (seen.dev, seen.ino) => {}
            Ok(_) => return out.unverified(dir, "replaced during scan; not entered"),
            Err(e) => {
                return out.unverified(
                    dir,
                    format!("cannot stat directory: {}", io::Error::from(e)),
                );
            }
        }
        let listing = match Dir::read_from(&*fd) {
            Ok(listing) => listing,
            Err(e) => {
                return out.unverified(
                    dir,
                    format!("cannot list directory: {}", io::Error::from(e)),
                );
            }
        };
        // Files are pushed after subdirectories so they are popped first:
        // a directory's files are hashed (and its descriptor closed) before
        // the walk goes deeper, which bounds the descriptors held open.
        let mut files = Vec::new();
        for child in listing {
            let child = match child {
                Ok(child) => child,
                Err(e) => {
                    // The rest of this listing is lost: say so for the whole
                    // directory rather than pretend it was complete.
                    out.unverified(
                        dir.clone(),
                        format!("directory listing failed part-way: {}", io::Error::from(e)),
                    );
                    break;
                }
            };
            let name = child.file_name();
            let name_bytes = name.to_bytes();
            if name_bytes == b"." || name_bytes == b".." {
                continue;
            }
            let mut path = Vec::with_capacity(dir.len() + 1 + name_bytes.len());
            if !dir.is_empty() {
                path.extend_from_slice(&dir);
                path.push(b'/');
            }
            path.extend_from_slice(name_bytes);
            // Ancestors were checked when they were walked.
            if self.policy.excludes_entry(&path) {
                continue;
            }
            self.visit(&fd, name, path, jobs, &mut files, out);
        }
        jobs.append(&mut files);
    }

    /// Records one path found in a listing, queueing the work it needs.
    fn visit<V: Visitor>(
        &self,
        dir: &Arc<OwnedFd>,
        name: &CStr,
        path: Vec<u8>,
        jobs: &mut Vec<Job>,
        files: &mut Vec<Job>,
        out: &mut Worker<'_, V>,
    ) {
        let meta = match rustix::fs::statat(&**dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Meta::from_stat(&st),
            Err(Errno::NOENT) => return out.unverified(path, "vanished during scan"),
            Err(e) => return out.unverified(path, format!("cannot stat: {}", io::Error::from(e))),
        };
        match meta.kind {
            EntryKind::Dir => {
                if self.options.one_file_system && meta.dev != self.root_dev {
                    out.unverified(
                        path.clone(),
                        "mount point of another file system; not entered (--one-file-system)",
                    );
                } else {
                    jobs.push(Job::Dir {
                        parent: Arc::clone(dir),
                        name: Some(name.to_owned()),
                        path: path.clone(),
                        seen: meta,
                    });
                }
                out.record(meta.to_entry(path), &meta);
            }
            EntryKind::File if self.options.content == ContentMode::Hash => {
                files.push(Job::File {
                    dir: Arc::clone(dir),
                    name: name.to_owned(),
                    path,
                    seen: meta,
                });
            }
            EntryKind::File => {
                let mut entry = meta.to_entry(path);
                match hash::read_capability_in(dir, name, &self.absolute(&entry.path)) {
                    Ok(capability) => {
                        entry.capability = capability;
                        out.record(entry, &meta);
                    }
                    Err(e) => {
                        out.unverified(
                            entry.path.to_vec(),
                            format!("cannot read capabilities: {e}"),
                        );
                        out.record_incomplete(entry, &meta);
                    }
                }
            }
            EntryKind::Symlink => {
                let mut entry = meta.to_entry(path);
                match rustix::fs::readlinkat(&**dir, name, Vec::new()) {
                    Ok(target) => {
                        entry.symlink_target = Some(target.into_bytes().into());
                        out.record(entry, &meta);
                    }
                    Err(Errno::NOENT) => {
                        out.unverified(entry.path.to_vec(), "vanished during scan")
                    }
                    Err(e) => {
                        out.unverified(
                            entry.path.to_vec(),
                            format!("cannot read symlink: {}", io::Error::from(e)),
                        );
                        out.record_incomplete(entry, &meta);
                    }
                }
            }
            EntryKind::Fifo
            | EntryKind::Socket
            | EntryKind::CharDevice
            | EntryKind::BlockDevice => {
                out.record(meta.to_entry(path), &meta);
            }
        }
    }

    fn hash_file<V: Visitor>(
        &self,
        dir: &Arc<OwnedFd>,
        name: &CStr,
        path: Vec<u8>,
        seen: Meta,
        buf: &mut [u8],
        out: &mut Worker<'_, V>,
    ) {
        match hash::hash_file(&**dir, name, &seen, buf, self.options.read_control()) {
            Ok(hashed) => {
                out.totals.files_hashed += 1;
                out.totals.bytes_hashed += hashed.meta.size;
                let mut entry = hashed.meta.to_entry(path);
                entry.blake3 = Some(hashed.blake3);
                entry.capability = hashed.capability;
                out.record(entry, &hashed.meta);
            }
            Err(HashError::Vanished) => out.unverified(path, "vanished during scan"),
            Err(HashError::Replaced) => {
                // Record whatever is there now, but never chase a path that
                // keeps being swapped, and never enter a directory that
                // appeared mid-scan.
                let mut jobs = Vec::new();
                let mut files = Vec::new();
                self.visit(dir, name, path.clone(), &mut jobs, &mut files, out);
                if !files.is_empty() {
                    out.unverified(path, "replaced during scan; content not read");
                } else if !jobs.is_empty() {
                    out.unverified(path, "replaced by a directory during scan; not entered");
                }
            }
            // The whole scan is being abandoned; this is never reported.
            Err(HashError::Cancelled) => out.unverified(path, "scan cancelled"),
            Err(e @ HashError::KeptChanging) | Err(e @ HashError::Io(_)) => {
                let reason = match &e {
                    HashError::Io(io) => format!("cannot read: {io}"),
                    other => other.to_string(),
                };
                out.unverified(path.clone(), reason);
                out.record_incomplete(seen.to_entry(path), &seen);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn options(threads: usize, content: ContentMode) -> ScanOptions {
        ScanOptions {
            threads,
            content,
            ..ScanOptions::default()
        }
    }

    fn paths(scan: &Scan) -> Vec<String> {
        scan.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect()
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/ssh")).unwrap();
        std::fs::create_dir_all(root.join("proc/1")).unwrap();
        std::fs::write(root.join("etc/passwd"), b"root:x:0:0\n").unwrap();
        std::fs::write(root.join("etc/ssh/sshd_config"), b"PermitRootLogin no\n").unwrap();
        std::fs::write(root.join("proc/1/status"), b"never read").unwrap();
        symlink("ssh", root.join("etc/loop")).unwrap();
        symlink("../../..", root.join("etc/ssh/up")).unwrap();
        symlink("self", root.join("etc/self")).unwrap();
        std::fs::hard_link(root.join("etc/passwd"), root.join("etc/passwd-")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("etc/fifo"),
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        dir
    }

    #[test]
    fn records_every_entry_sorted_and_skips_excluded() {
        let dir = tree();
        let scan = scan(
            dir.path(),
            &Policy::builtin(),
            &options(4, ContentMode::Hash),
        )
        .unwrap();
        assert_eq!(
            paths(&scan),
            [
                "",
                "etc",
                "etc/fifo",
                "etc/loop",
                "etc/passwd",
                "etc/passwd-",
                "etc/self",
                "etc/ssh",
                "etc/ssh/sshd_config",
                "etc/ssh/up"
            ]
        );
        assert!(scan.unverified.is_empty(), "{:?}", scan.unverified);
        let passwd = &scan.entries[4];
        assert_eq!(
            passwd.blake3,
            Some(*blake3::hash(b"root:x:0:0\n").as_bytes())
        );
        assert_eq!(scan.entries[2].kind, EntryKind::Fifo);
        assert_eq!(scan.entries[2].blake3, None);
        assert_eq!(
            scan.entries[9].symlink_target.as_deref(),
            Some(&b"../../.."[..])
        );
        // Hard links share a group; nothing else is grouped.
        assert_eq!(passwd.hardlink_group, 1);
        assert_eq!(scan.entries[5].hardlink_group, 1);
        assert_eq!(
            scan.entries
                .iter()
                .filter(|e| e.hardlink_group != 0)
                .count(),
            2
        );
        assert_eq!(scan.files_hashed, 3);
    }

    #[test]
    fn serial_and_parallel_scans_agree() {
        let dir = tree();
        for i in 0..200 {
            let sub = dir.path().join(format!("usr/lib/d{}", i % 7));
            std::fs::create_dir_all(&sub).unwrap();
            std::fs::write(sub.join(format!("f{i}")), vec![i as u8; i * 100]).unwrap();
        }
        let one = scan(
            dir.path(),
            &Policy::builtin(),
            &options(1, ContentMode::Hash),
        )
        .unwrap();
        let many = scan(
            dir.path(),
            &Policy::builtin(),
            &options(8, ContentMode::Hash),
        )
        .unwrap();
        assert_eq!(one.entries, many.entries);
        assert_eq!(one.entries.len(), 10 + 1 + 1 + 7 + 200);
    }

    #[test]
    fn metadata_only_reads_no_content() {
        let dir = tree();
        let scan = scan(
            dir.path(),
            &Policy::builtin(),
            &options(2, ContentMode::MetadataOnly),
        )
        .unwrap();
        assert!(scan.entries.iter().all(|e| e.blake3.is_none()));
        assert_eq!(scan.files_hashed, 0);
        assert_eq!(scan.entries.len(), 10);
    }

    #[test]
    fn non_utf8_names_are_kept_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let name = OsStr::from_bytes(b"caf\xe9");
        std::fs::write(dir.path().join(name), b"x").unwrap();
        let scan = scan(
            dir.path(),
            &Policy::builtin(),
            &options(2, ContentMode::Hash),
        )
        .unwrap();
        assert_eq!(&*scan.entries[1].path, b"caf\xe9");
    }

    /// Collects, and runs `swap` once, when the walk records `trigger`:
    /// the directory's listing job is queued but not yet run.
    struct SwapWhenSeen {
        trigger: &'static [u8],
        swap: Option<Box<dyn FnOnce() + Send>>,
        inner: Collect,
    }

    impl Visitor for SwapWhenSeen {
        fn entry(&mut self, entry: Entry, link: Option<LinkId>, complete: bool) {
            if &entry.path[..] == self.trigger
                && let Some(swap) = self.swap.take()
            {
                swap();
            }
            self.inner.entry(entry, link, complete);
        }
        fn unverified(&mut self, path: Vec<u8>, reason: String) {
            self.inner.unverified(path, reason);
        }
    }

    #[test]
    fn a_parent_swapped_for_a_symlink_mid_walk_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/real"), b"in the image").unwrap();
        std::fs::create_dir_all(outside.join("b")).unwrap();
        std::fs::write(outside.join("b/planted"), b"decoy").unwrap();
        let (root_c, outside_c) = (root.clone(), outside.clone());
        let swap = move || {
            // `a/b` is queued; now `a` becomes a symlink to a decoy tree.
            std::fs::rename(root_c.join("a"), root_c.join("a.orig")).unwrap();
            symlink(&outside_c, root_c.join("a")).unwrap();
        };
        let mut swap = Some(Box::new(swap) as Box<dyn FnOnce() + Send>);
        let (visitors, _) = scan_with(
            &root,
            &Policy::builtin(),
            &options(1, ContentMode::Hash),
            || SwapWhenSeen {
                trigger: b"a/b",
                swap: swap.take(),
                inner: Collect::default(),
            },
        )
        .unwrap();
        let found: Vec<String> = visitors
            .iter()
            .flat_map(|v| v.inner.entries.iter())
            .map(|e| String::from_utf8_lossy(&e.path).into_owned())
            .collect();
        assert!(
            !found.iter().any(|p| p.contains("planted")),
            "followed the swapped parent: {found:?}"
        );
        // The directory that was queued is the one listed: its real content.
        assert!(found.contains(&"a/b/real".to_string()), "{found:?}");
    }

    /// The cap holds for the whole scan, across threads. Only a lower bound
    /// on the time is checked: throttling can only make the scan slower,
    /// so this is not a flaky timing test.
    #[test]
    fn a_read_limit_caps_hashing_across_threads() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..3 {
            std::fs::write(dir.path().join(format!("f{i}")), vec![i as u8; 1 << 20]).unwrap();
        }
        let rate = 2 << 20;
        let options = ScanOptions {
            read_limit: Some(Arc::new(ReadLimit::new(rate))),
            ..options(3, ContentMode::Hash)
        };
        let started = std::time::Instant::now();
        let scan = scan(dir.path(), &Policy::builtin(), &options).unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        assert_eq!(scan.bytes_hashed, 3 << 20);
        // 3 MiB at 2 MiB/s, less the 0.1 s burst: at least 1.4 s.
        assert!(elapsed >= 1.2, "3 MiB hashed in {elapsed:.2}s at 2 MiB/s");
        // The hashes are the same as unthrottled.
        let plain = super::scan(dir.path(), &Policy::builtin(), &options_plain()).unwrap();
        assert_eq!(scan.entries, plain.entries);
    }

    fn options_plain() -> ScanOptions {
        options(2, ContentMode::Hash)
    }

    #[test]
    fn a_cancelled_scan_is_an_error_not_a_partial_result() {
        let dir = tree();
        let options = ScanOptions {
            cancel: Some(Arc::new(AtomicBool::new(true))),
            ..options(2, ContentMode::Hash)
        };
        assert!(matches!(
            scan(dir.path(), &Policy::builtin(), &options),
            Err(ScanError::Cancelled)
        ));
    }

    #[test]
    fn unusable_roots_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            scan(&file, &Policy::builtin(), &ScanOptions::default()),
            Err(ScanError::RootNotDir(_))
        ));
        assert!(matches!(
            scan(
                &dir.path().join("missing"),
                &Policy::builtin(),
                &ScanOptions::default()
            ),
            Err(ScanError::Root { .. })
        ));
    }
}
