//! rpm's package database (Fedora, RHEL, SUSE): the SQLite backend of
//! rpm >= 4.16.
//!
//! `rpmdb.sqlite` has one row per installed package in
//! `Packages(hnum INTEGER PRIMARY KEY, blob BLOB)`; each blob is an rpm
//! header (see [`Header::parse`]). The other tables are indexes rpm can
//! rebuild from the headers, so they are not read.
//!
//! The database lives in `var/lib/rpm`, or in `usr/lib/sysimage/rpm` where
//! distributions moved it (Fedora 36+, openSUSE), usually leaving a symlink
//! at the old place. Both are looked at; a database reached through both is
//! read once. The older Berkeley DB and ndb backends are not read but
//! reported, so a root whose rpm packages could not be read never looks like
//! a root without rpm.
//!
//! rpm can hold several packages with one name and architecture: install-only
//! packages such as kernels, and one `gpg-pubkey` per imported key. The
//! manifest keys packages by (name, architecture), so these become one
//! package whose version lists every installed version, sorted and joined by
//! `", "` (rpm does not allow ',' or ' ' in versions). A new kernel then shows
//! as a changed version of `kernel-core`, not as a duplicate.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use driftwatch_proto::{Package, PackageManager, Unverified};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{Database, Lookup, Parsed, problem, resolve_file};

/// Where rpm keeps its database, relative to the root, old place first.
const DIRS: [&str; 2] = ["var/lib/rpm", "usr/lib/sysimage/rpm"];

/// The SQLite backend's file, in one of [`DIRS`].
const SQLITE: &str = "rpmdb.sqlite";

/// Backends this reader does not read: the file each keeps its headers in,
/// and its name for the problem report.
const UNSUPPORTED: [(&str, &str); 2] = [("Packages", "Berkeley DB"), ("Packages.db", "ndb")];

/// What `rpm -q --qf '%{arch}'` shows for a header without an architecture,
/// such as a `gpg-pubkey`.
const NO_ARCH: &str = "(none)";

/// Looks for rpm databases in every place rpm keeps one and reads each
/// distinct one found.
pub(super) fn read(root: &Path) -> Vec<Lookup> {
    // Root-relative paths already looked at: with `var/lib/rpm` a symlink to
    // `usr/lib/sysimage/rpm`, both places lead to one file, read once.
    let mut seen: HashSet<Box<[u8]>> = HashSet::new();
    let mut lookups = Vec::new();
    for dir in DIRS.map(Path::new) {
        match resolve_file(root, &dir.join(SQLITE)) {
            Ok(Some(path)) => {
                if seen.insert(path.as_os_str().as_bytes().into()) {
                    lookups.push(read_sqlite(root, &path));
                }
                continue;
            }
            Ok(None) => {}
            Err(failed) => {
                if seen.insert(failed.path.clone()) {
                    lookups.push(Lookup::Failed(failed));
                }
                continue;
            }
        }
        for (file, backend) in UNSUPPORTED {
            let failed = match resolve_file(root, &dir.join(file)) {
                Ok(None) => continue,
                Ok(Some(path)) => problem(
                    &path,
                    format!("rpm {backend} database is not supported; packages not read"),
                ),
                Err(failed) => failed,
            };
            if seen.insert(failed.path.clone()) {
                lookups.push(Lookup::Failed(failed));
            }
        }
    }
    lookups
}

/// Reads one `rpmdb.sqlite`, at `path` relative to `root`.
fn read_sqlite(root: &Path, path: &Path) -> Lookup {
    let parsed = match read_headers(&root.join(path)) {
        Ok(parsed) => parsed,
        Err(reason) => return Lookup::Failed(problem(path, reason)),
    };
    let mut problems: Vec<Unverified> = unmerged_wal(root, path).into_iter().collect();
    problems.extend(
        parsed
            .problems
            .into_iter()
            .map(|reason| problem(path, reason)),
    );
    Lookup::Found(Database {
        manager: PackageManager::Rpm,
        path: path.to_owned(),
        packages: parsed.packages,
        problems,
    })
}

/// A problem, if the database's write-ahead log holds transactions.
///
/// rpm folds its log into the database when it exits, leaving an empty
/// `-wal` file. A non-empty one means rpm is running or was interrupted, and
/// the database opened as immutable (see [`read_headers`]) does not see
/// what the log holds.
fn unmerged_wal(root: &Path, path: &Path) -> Option<Unverified> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = PathBuf::from(wal);
    let meta = fs::symlink_metadata(root.join(&wal)).ok()?;
    (meta.is_file() && meta.len() > 0).then(|| {
        problem(
            &wal,
            "rpm's write-ahead log holds changes not yet merged into the database \
             (rpm is running or was interrupted); they were not read",
        )
    })
}

/// Reads every header in an `rpmdb.sqlite`.
///
/// The database is opened read-only and as `immutable`: SQLite then takes no
/// locks and creates no `-wal`, `-shm` or journal file beside it, so reading
/// an image (or a live host) leaves no trace in it and cannot be blocked by a
/// lock a crashed rpm left behind.
fn read_headers(file: &Path) -> Result<Parsed, String> {
    let uri = sqlite_uri(file).map_err(|e| format!("cannot locate rpm database: {e}"))?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = Connection::open_with_flags(&uri, flags)
        .map_err(|e| format!("cannot open rpm database: {e}"))?;
    let unreadable = |e: rusqlite::Error| format!("cannot read rpm database: {e}");
    // A view named Packages could be made to compute forever; only a real
    // table is read.
    let kind: Option<String> = connection
        .query_row(
            "SELECT type FROM sqlite_master WHERE name = 'Packages' COLLATE NOCASE",
            [],
            |row| row.get(0),
        )
        .optional()
        .map_err(unreadable)?;
    if kind.as_deref() != Some("table") {
        return Err("SQLite database has no Packages table; not an rpm database".into());
    }
    let mut statement = connection
        .prepare("SELECT hnum, blob FROM Packages ORDER BY hnum")
        .map_err(unreadable)?;
    let mut rows = statement.query([]).map_err(unreadable)?;

    let mut problems = Vec::new();
    let mut headers = Vec::new();
    loop {
        let row = match rows.next() {
            Ok(Some(row)) => row,
            Ok(None) => break,
            Err(e) => {
                problems.push(format!(
                    "reading stopped after {} headers, the rest were not read: {e}",
                    headers.len()
                ));
                break;
            }
        };
        let hnum = match row.get_ref(0) {
            Ok(ValueRef::Integer(hnum)) => hnum,
            _ => {
                problems.push("a header row has no integer hnum; skipped".into());
                continue;
            }
        };
        let blob = match row.get_ref(1) {
            Ok(ValueRef::Blob(blob)) => blob,
            Ok(other) => {
                problems.push(format!(
                    "header {hnum}: {} value where a blob was expected; skipped",
                    other.data_type()
                ));
                continue;
            }
            Err(e) => {
                problems.push(format!("header {hnum}: {e}; skipped"));
                continue;
            }
        };
        match Header::parse(blob) {
            Ok(header) => {
                problems.extend(header.lossy.iter().map(|tag| {
                    format!(
                        "header {hnum}: {tag} is not valid UTF-8; read with replacement characters"
                    )
                }));
                headers.push(header);
            }
            Err(why) => problems.push(format!("header {hnum}: {why}; skipped")),
        }
    }
    Ok(Parsed {
        packages: merge(headers),
        problems,
    })
}

/// One package per (name, architecture), listing every installed version.
fn merge(headers: Vec<Header>) -> Vec<Package> {
    let mut versions: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for header in headers {
        let version = header.evr();
        let architecture = header.arch.unwrap_or_else(|| NO_ARCH.to_owned());
        versions
            .entry((header.name, architecture))
            .or_default()
            .push(version);
    }
    versions
        .into_iter()
        .map(|((name, architecture), mut versions)| {
            versions.sort();
            Package {
                manager: PackageManager::Rpm,
                name,
                version: versions.join(", "),
                architecture,
            }
        })
        .collect()
}

/// A `file:` URI for SQLite naming `file`, with every byte that could be
/// read as URI syntax (`?`, `#`, `%`, spaces, non-ASCII) percent-encoded.
fn sqlite_uri(file: &Path) -> io::Result<String> {
    // Absolute, so that the path never starts where SQLite expects an
    // authority (`file://host/...`).
    let absolute = std::path::absolute(file)?;
    let mut uri = String::from("file://");
    for &byte in absolute.as_os_str().as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(uri, "%{byte:02X}");
        }
    }
    uri.push_str("?immutable=1");
    Ok(uri)
}

/// rpm header tags read here.
const NAME: i32 = 1000;
const VERSION: i32 = 1001;
const RELEASE: i32 = 1002;
const EPOCH: i32 = 1003;
const ARCH: i32 = 1022;

/// rpm header data types read here.
const INT32: i32 = 4;
const STRING: i32 = 6;
const STRING_ARRAY: i32 = 8;
const I18NSTRING: i32 = 9;

/// The size of one index entry: tag, type, offset and count.
const ENTRY_SIZE: usize = 16;

/// The fields of one rpm header that identify a package.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Header {
    name: String,
    epoch: Option<u32>,
    version: String,
    release: String,
    arch: Option<String>,
    /// The tags whose strings were not valid UTF-8.
    lossy: Vec<&'static str>,
}

impl Header {
    /// Parses a header blob as rpm stores it in its database:
    ///
    /// - `il`, `dl`: big-endian i32, the number of index entries and the size
    ///   of the data store;
    /// - `il` entries of four big-endian i32: tag, type, offset into the
    ///   data store, count;
    /// - `dl` bytes of data store. A string is NUL-terminated at its offset.
    ///
    /// The blob comes from the root being read and may be hostile: every
    /// length and offset is checked, and a bad one is an error.
    fn parse(blob: &[u8]) -> Result<Header, String> {
        let (Some(il), Some(dl)) = (be_i32(blob, 0), be_i32(blob, 4)) else {
            return Err(format!(
                "header is {} bytes, shorter than its 8-byte preamble",
                blob.len()
            ));
        };
        let entries = usize::try_from(il).map_err(|_| format!("negative index count {il}"))?;
        let data_len = usize::try_from(dl).map_err(|_| format!("negative data size {dl}"))?;
        let expected = entries
            .checked_mul(ENTRY_SIZE)
            .and_then(|n| n.checked_add(8))
            .and_then(|n| n.checked_add(data_len));
        if expected != Some(blob.len()) {
            return Err(format!(
                "header is {} bytes but its preamble says 8 + {entries} index entries x 16 + {data_len} data bytes",
                blob.len()
            ));
        }
        let (index, data) = blob[8..].split_at(entries * ENTRY_SIZE);
        let view = View { index, data };

        let mut lossy = Vec::new();
        let mut required = |tag| match view.string(tag)? {
            Some((value, is_lossy)) => {
                if is_lossy {
                    lossy.push(tag_name(tag));
                }
                Ok(value)
            }
            None => Err(format!("header has no {}", tag_name(tag))),
        };
        let name = required(NAME)?;
        let version = required(VERSION)?;
        let release = required(RELEASE)?;
        let arch = match view.string(ARCH)? {
            Some((value, is_lossy)) => {
                if is_lossy {
                    lossy.push(tag_name(ARCH));
                }
                Some(value)
            }
            None => None,
        };
        Ok(Header {
            name,
            epoch: view.int32(EPOCH)?,
            version,
            release,
            arch,
            lossy,
        })
    }

    /// `[epoch:]version-release`, as rpm's `%{evr}` shows it: the epoch
    /// whenever the header has one, even 0.
    fn evr(&self) -> String {
        match self.epoch {
            Some(epoch) => format!("{epoch}:{}-{}", self.version, self.release),
            None => format!("{}-{}", self.version, self.release),
        }
    }
}

/// A header's index and data store, already checked to be within the blob.
#[derive(Debug, Clone, Copy)]
struct View<'a> {
    index: &'a [u8],
    data: &'a [u8],
}

/// One index entry.
#[derive(Debug, Clone, Copy)]
struct Entry {
    kind: i32,
    offset: i32,
    count: i32,
}

impl View<'_> {
    /// The first index entry for `tag`, if any.
    fn find(&self, tag: i32) -> Option<Entry> {
        self.index
            .chunks_exact(ENTRY_SIZE)
            .find(|entry| be_i32(entry, 0) == Some(tag))
            .map(|entry| Entry {
                // chunks_exact guarantees 16 bytes, so these are all Some.
                kind: be_i32(entry, 4).unwrap_or_default(),
                offset: be_i32(entry, 8).unwrap_or_default(),
                count: be_i32(entry, 12).unwrap_or_default(),
            })
    }

    /// Where `entry`'s value starts in the data store, checked to leave
    /// room for `size` bytes.
    fn value_at(&self, tag: i32, entry: Entry, size: usize) -> Result<&[u8], String> {
        if entry.count < 1 {
            return Err(format!("{} has count {}", tag_name(tag), entry.count));
        }
        usize::try_from(entry.offset)
            .ok()
            .filter(|&offset| {
                offset
                    .checked_add(size)
                    .is_some_and(|end| end <= self.data.len())
            })
            .map(|offset| &self.data[offset..])
            .ok_or_else(|| {
                format!(
                    "{} offset {} is outside the {}-byte data store",
                    tag_name(tag),
                    entry.offset,
                    self.data.len()
                )
            })
    }

    /// A string tag's value and whether it had to be read lossily. Arrays
    /// give their first element: rpm writes these tags as plain strings, but
    /// reading an array the same way costs nothing.
    fn string(&self, tag: i32) -> Result<Option<(String, bool)>, String> {
        let Some(entry) = self.find(tag) else {
            return Ok(None);
        };
        if !matches!(entry.kind, STRING | STRING_ARRAY | I18NSTRING) {
            return Err(format!(
                "{} has type {}, not a string",
                tag_name(tag),
                entry.kind
            ));
        }
        let value = self.value_at(tag, entry, 1)?;
        let end = value
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("{} runs off the end of the data store", tag_name(tag)))?;
        let bytes = &value[..end];
        Ok(Some(match std::str::from_utf8(bytes) {
            Ok(text) => (text.to_owned(), false),
            Err(_) => (String::from_utf8_lossy(bytes).into_owned(), true),
        }))
    }

    /// An INT32 tag's first value.
    fn int32(&self, tag: i32) -> Result<Option<u32>, String> {
        let Some(entry) = self.find(tag) else {
            return Ok(None);
        };
        if entry.kind != INT32 {
            return Err(format!(
                "{} has type {}, not INT32",
                tag_name(tag),
                entry.kind
            ));
        }
        let value = self.value_at(tag, entry, 4)?;
        Ok(Some(u32::from_be_bytes([
            value[0], value[1], value[2], value[3],
        ])))
    }
}

/// The big-endian i32 at `at`, if `bytes` is long enough.
fn be_i32(bytes: &[u8], at: usize) -> Option<i32> {
    let four = bytes.get(at..at.checked_add(4)?)?;
    Some(i32::from_be_bytes(four.try_into().ok()?))
}

fn tag_name(tag: i32) -> &'static str {
    match tag {
        NAME => "NAME",
        VERSION => "VERSION",
        RELEASE => "RELEASE",
        EPOCH => "EPOCH",
        ARCH => "ARCH",
        _ => "tag",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::{PackageScan, read_installed, tests::write};
    use driftwatch_proto::PackageDatabase;

    /// A real database made by rpm 4.18; see the README beside it.
    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/packages/rpm/rpmdb.sqlite"
    );

    const DB_PATH: &str = "var/lib/rpm/rpmdb.sqlite";

    fn package(name: &str, version: &str, architecture: &str) -> Package {
        Package {
            manager: PackageManager::Rpm,
            name: name.into(),
            version: version.into(),
            architecture: architecture.into(),
        }
    }

    /// What `rpm --dbpath ... -qa` lists for the fixture.
    fn fixture_packages() -> Vec<Package> {
        vec![
            package("dw-epoch", "2:0.9-1.fc40", "noarch"),
            package("dw-hello", "1.2.3-4", "noarch"),
            package("dw-multi", "5.0-1", "i686"),
            package("dw-multi", "5.0-1", "x86_64"),
            package("gpg-pubkey", "f8ae0efd-6b020021", "(none)"),
        ]
    }

    /// A root holding `database` as its rpm database.
    fn root_with(database: &[u8]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), DB_PATH, database);
        root
    }

    fn fixture() -> Vec<u8> {
        fs::read(FIXTURE).unwrap()
    }

    /// The fixture with extra rows added to its Packages table. The copy is
    /// changed outside any root, so only the finished file is used.
    fn fixture_with_rows(rows: &[(i64, rusqlite::types::Value)]) -> Vec<u8> {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join(SQLITE);
        fs::write(&file, fixture()).unwrap();
        let connection = Connection::open(&file).unwrap();
        // Back to a rollback journal, so that all rows land in the file.
        connection
            .query_row("PRAGMA journal_mode = DELETE", [], |_| Ok(()))
            .unwrap();
        for (hnum, blob) in rows {
            connection
                .execute(
                    "INSERT INTO Packages (hnum, blob) VALUES (?1, ?2)",
                    rusqlite::params![hnum, blob],
                )
                .unwrap();
        }
        drop(connection);
        fs::read(&file).unwrap()
    }

    /// A header blob from index entries `[tag, type, offset, count]` and a
    /// data store, with a preamble that matches them.
    fn blob(entries: &[[i32; 4]], data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&i32::try_from(entries.len()).unwrap().to_be_bytes());
        out.extend_from_slice(&i32::try_from(data.len()).unwrap().to_be_bytes());
        for entry in entries {
            for field in entry {
                out.extend_from_slice(&field.to_be_bytes());
            }
        }
        out.extend_from_slice(data);
        out
    }

    /// A well-formed header holding string tags.
    fn strings_header(tags: &[(i32, &str)]) -> Vec<u8> {
        let mut entries = Vec::new();
        let mut data = Vec::new();
        for (tag, value) in tags {
            entries.push([*tag, STRING, i32::try_from(data.len()).unwrap(), 1]);
            data.extend_from_slice(value.as_bytes());
            data.push(0);
        }
        blob(&entries, &data)
    }

    fn blob_value(bytes: Vec<u8>) -> rusqlite::types::Value {
        rusqlite::types::Value::Blob(bytes)
    }

    /// The fixture's header blobs, for mutating.
    fn fixture_blobs() -> Vec<Vec<u8>> {
        let root = root_with(&fixture());
        let uri = sqlite_uri(&root.path().join(DB_PATH)).unwrap();
        let connection = Connection::open_with_flags(
            uri,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
        )
        .unwrap();
        let mut statement = connection.prepare("SELECT blob FROM Packages").unwrap();
        statement
            .query_map([], |row| row.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn file_names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn reads_a_real_database_without_touching_it() {
        let root = root_with(&fixture());
        let scan = read_installed(root.path());
        assert_eq!(
            scan,
            PackageScan {
                packages: fixture_packages(),
                databases: vec![PackageDatabase {
                    manager: PackageManager::Rpm,
                    path: DB_PATH.into(),
                    package_count: 5,
                }],
                problems: vec![],
            }
        );
        // The fixture is in WAL mode, as rpm leaves it: an ordinary open
        // would create -wal and -shm files here.
        assert_eq!(file_names(&root.path().join("var/lib/rpm")), [SQLITE]);
        assert!(fs::read(root.path().join(DB_PATH)).unwrap() == fixture());
    }

    #[test]
    fn a_root_path_that_needs_escaping_in_a_uri_is_read() {
        let outer = tempfile::tempdir().unwrap();
        let root = outer.path().join("a b?c=1#d%20é");
        write(&root, DB_PATH, &fixture());
        let scan = read_installed(&root);
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(scan.packages, fixture_packages());
    }

    #[test]
    fn the_sysimage_location_is_read_once_through_the_old_symlink() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "usr/lib/sysimage/rpm/rpmdb.sqlite", &fixture());
        fs::create_dir_all(root.path().join("var/lib")).unwrap();
        std::os::unix::fs::symlink(
            "../../usr/lib/sysimage/rpm",
            root.path().join("var/lib/rpm"),
        )
        .unwrap();
        let scan = read_installed(root.path());
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(scan.packages, fixture_packages());
        assert_eq!(scan.databases.len(), 1);
        assert_eq!(scan.databases[0].path, "usr/lib/sysimage/rpm/rpmdb.sqlite");
    }

    #[test]
    fn a_package_in_two_databases_is_kept_once() {
        let root = root_with(&fixture());
        write(root.path(), "usr/lib/sysimage/rpm/rpmdb.sqlite", &fixture());
        let scan = read_installed(root.path());
        assert_eq!(scan.packages, fixture_packages());
        assert_eq!(scan.databases.len(), 2);
        assert_eq!(scan.problems.len(), 5);
        assert!(
            scan.problems[0]
                .reason
                .ends_with("is also listed by var/lib/rpm/rpmdb.sqlite; skipped")
        );
    }

    #[test]
    fn versions_of_one_name_and_arch_are_merged() {
        let kernel = |version| {
            blob_value(strings_header(&[
                (NAME, "kernel-core"),
                (VERSION, version),
                (RELEASE, "200.fc40"),
                (ARCH, "x86_64"),
            ]))
        };
        let database = fixture_with_rows(&[(100, kernel("6.9.7")), (101, kernel("6.10.3"))]);
        let scan = read_installed(root_with(&database).path());
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        let kernels: Vec<&Package> = scan
            .packages
            .iter()
            .filter(|p| p.name == "kernel-core")
            .collect();
        assert_eq!(
            kernels,
            [&package(
                "kernel-core",
                "6.10.3-200.fc40, 6.9.7-200.fc40",
                "x86_64"
            )]
        );
        assert_eq!(scan.databases[0].package_count, 6);
    }

    #[test]
    fn corrupt_headers_are_problems_and_the_rest_is_read() {
        let name_version_release = [
            [NAME, STRING, 0, 1],
            [VERSION, STRING, 2, 1],
            [RELEASE, STRING, 4, 1],
        ];
        let good = fixture_blobs().remove(1);
        let with_entry = |entry: [i32; 4]| {
            let mut entries = name_version_release.to_vec();
            entries.push(entry);
            blob_value(blob(&entries, b"a\0b\0c\0"))
        };
        let rows = [
            (100, blob_value(good[..good.len() / 2].to_vec())),
            (101, blob_value(vec![0, 0, 0])),
            (
                102,
                blob_value(blob(&[[NAME, STRING, 0, 1]], b"a\0")[..8].to_vec()),
            ),
            (
                103,
                blob_value([&i32::MAX.to_be_bytes()[..], &[0; 4]].concat()),
            ),
            (
                104,
                blob_value([&[0; 4][..], &(-1i32).to_be_bytes()].concat()),
            ),
            (105, blob_value(blob(&[[NAME, STRING, 9, 1]], b"abc\0"))),
            (106, blob_value(blob(&[[NAME, STRING, -1, 1]], b"abc\0"))),
            (107, blob_value(blob(&[[NAME, STRING, 0, 1]], b"abc"))),
            (108, blob_value(blob(&[[NAME, INT32, 0, 1]], b"abc\0"))),
            (109, blob_value(blob(&[], b""))),
            (110, with_entry([EPOCH, INT32, 4, 1])),
            (111, with_entry([EPOCH, STRING, 0, 1])),
            (112, with_entry([ARCH, STRING, i32::MAX, 1])),
            (113, with_entry([ARCH, STRING, 0, 0])),
            (114, rusqlite::types::Value::Text("not a header".into())),
        ];
        let scan = read_installed(root_with(&fixture_with_rows(&rows)).path());
        assert_eq!(scan.packages, fixture_packages());
        assert_eq!(scan.databases[0].package_count, 5);
        let reasons: Vec<&str> = scan.problems.iter().map(|p| p.reason.as_str()).collect();
        let half = good.len() / 2;
        assert_eq!(
            reasons,
            [
                format!(
                    "header 100: header is {half} bytes but its preamble says 8 + {} index entries x 16 + {} data bytes; skipped",
                    i32::from_be_bytes(good[..4].try_into().unwrap()),
                    i32::from_be_bytes(good[4..8].try_into().unwrap()),
                ),
                "header 101: header is 3 bytes, shorter than its 8-byte preamble; skipped".into(),
                "header 102: header is 8 bytes but its preamble says 8 + 1 index entries x 16 + 2 data bytes; skipped".into(),
                "header 103: header is 8 bytes but its preamble says 8 + 2147483647 index entries x 16 + 0 data bytes; skipped".into(),
                "header 104: negative data size -1; skipped".into(),
                "header 105: NAME offset 9 is outside the 4-byte data store; skipped".into(),
                "header 106: NAME offset -1 is outside the 4-byte data store; skipped".into(),
                "header 107: NAME runs off the end of the data store; skipped".into(),
                "header 108: NAME has type 4, not a string; skipped".into(),
                "header 109: header has no NAME; skipped".into(),
                "header 110: EPOCH offset 4 is outside the 6-byte data store; skipped".into(),
                "header 111: EPOCH has type 6, not INT32; skipped".into(),
                "header 112: ARCH offset 2147483647 is outside the 6-byte data store; skipped".into(),
                "header 113: ARCH has count 0; skipped".into(),
                "header 114: Text value where a blob was expected; skipped".into(),
            ]
        );
        assert!(scan.problems.iter().all(|p| &*p.path == DB_PATH.as_bytes()));
    }

    #[test]
    fn mangled_real_headers_never_panic() {
        for good in fixture_blobs() {
            assert!(Header::parse(&good).is_ok());
            for len in 0..good.len() {
                assert!(Header::parse(&good[..len]).is_err());
            }
            for at in 0..good.len() {
                for byte in [0x00, 0x7f, 0x80, 0xff] {
                    let mut bad = good.clone();
                    bad[at] = byte;
                    let _ = Header::parse(&bad);
                }
            }
        }
    }

    #[test]
    fn array_and_i18n_strings_give_their_first_element() {
        let header = Header::parse(&blob(
            &[
                [NAME, I18NSTRING, 0, 1],
                [VERSION, STRING_ARRAY, 2, 2],
                [RELEASE, STRING, 6, 1],
                [EPOCH, INT32, 8, 1],
            ],
            b"n\0v\0w\0r\0\0\0\0\x07",
        ))
        .unwrap();
        assert_eq!(
            (header.name.as_str(), header.evr().as_str()),
            ("n", "7:v-r")
        );
        assert_eq!(header.arch, None);
    }

    #[test]
    fn non_utf8_strings_are_read_lossily_and_reported() {
        let mut data = b"caf\xe9\0".to_vec();
        data.extend_from_slice(b"1\0r\0");
        let row = blob_value(blob(
            &[
                [NAME, STRING, 0, 1],
                [VERSION, STRING, 5, 1],
                [RELEASE, STRING, 7, 1],
            ],
            &data,
        ));
        let scan = read_installed(root_with(&fixture_with_rows(&[(100, row)])).path());
        assert!(
            scan.packages
                .contains(&package("caf\u{fffd}", "1-r", "(none)"))
        );
        let reasons: Vec<&str> = scan.problems.iter().map(|p| p.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["header 100: NAME is not valid UTF-8; read with replacement characters"]
        );
    }

    #[test]
    fn a_file_that_is_not_sqlite_is_a_problem() {
        let scan = read_installed(root_with(&b"not a database\n".repeat(100)).path());
        assert!(scan.packages.is_empty());
        assert!(scan.databases.is_empty());
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(&*scan.problems[0].path, DB_PATH.as_bytes());
        assert!(
            scan.problems[0]
                .reason
                .starts_with("cannot read rpm database"),
            "{:?}",
            scan.problems
        );
    }

    #[test]
    fn sqlite_without_a_packages_table_is_a_problem() {
        let scratch = tempfile::tempdir().unwrap();
        let file = scratch.path().join("other.sqlite");
        Connection::open(&file)
            .unwrap()
            .execute_batch("CREATE VIEW Packages AS SELECT 1 AS hnum, x'00' AS blob;")
            .unwrap();
        let scan = read_installed(root_with(&fs::read(&file).unwrap()).path());
        assert!(scan.databases.is_empty());
        assert_eq!(
            scan.problems[0].reason,
            "SQLite database has no Packages table; not an rpm database"
        );
    }

    #[test]
    fn old_backends_are_reported_not_ignored() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "var/lib/rpm/Packages", b"\0\x06\x15\x61");
        write(root.path(), "usr/lib/sysimage/rpm/Packages.db", b"RpmP");
        let scan = read_installed(root.path());
        assert!(scan.databases.is_empty());
        let problems: Vec<(&[u8], &str)> = scan
            .problems
            .iter()
            .map(|p| (&*p.path, p.reason.as_str()))
            .collect();
        assert_eq!(
            problems,
            [
                (
                    &b"var/lib/rpm/Packages"[..],
                    "rpm Berkeley DB database is not supported; packages not read"
                ),
                (
                    &b"usr/lib/sysimage/rpm/Packages.db"[..],
                    "rpm ndb database is not supported; packages not read"
                ),
            ]
        );
    }

    #[test]
    fn an_unmerged_write_ahead_log_is_reported() {
        let root = root_with(&fixture());
        write(root.path(), "var/lib/rpm/rpmdb.sqlite-wal", b"");
        assert!(read_installed(root.path()).problems.is_empty());

        write(root.path(), "var/lib/rpm/rpmdb.sqlite-wal", b"pending");
        let scan = read_installed(root.path());
        assert_eq!(scan.packages, fixture_packages());
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(&*scan.problems[0].path, b"var/lib/rpm/rpmdb.sqlite-wal");
    }
}
