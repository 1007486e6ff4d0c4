//! The installed package set, read from a root's own package databases.
//!
//! Every path is looked up inside the root, never on the machine running the
//! agent: at bake time the root is an image tree on a build machine whose own
//! `/var/lib/dpkg` says nothing about the image. Symlinks inside the root are
//! followed the way a process chrooted into it would see them (see
//! `resolve_in_root`), so `var/lib/rpm -> /usr/lib/sysimage/rpm` finds the
//! image's database, not the build machine's.
//!
//! Reading never fails as a whole. A database that is absent is simply not
//! listed; one that exists but cannot be read is a problem; a malformed record
//! is skipped with a problem and the rest of its database is kept. A package
//! set that silently lost entries would turn into false "package removed"
//! drift later, so every skip is reported.
//!
//! # Layout
//! - `dpkg`: `var/lib/dpkg/status` (Debian, Ubuntu).
//! - `apk`: `lib/apk/db/installed` (Alpine).
//! - `rpm`: `rpmdb.sqlite` (Fedora, RHEL, SUSE with rpm >= 4.16).

mod apk;
mod dpkg;
mod rpm;

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use driftwatch_proto::{Package, PackageDatabase, PackageManager, Unverified};

/// What reading a root's package databases found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageScan {
    /// Sorted by (manager, name, architecture), no duplicate keys: the order
    /// and uniqueness the manifest codec requires.
    pub packages: Vec<Package>,
    /// Every database that was found and read (even if empty), with the
    /// number of packages it lists, sorted by (manager, path). A database
    /// that could not be opened at all is not here but in `problems`.
    pub databases: Vec<PackageDatabase>,
    /// Malformed records, unreadable or corrupt databases. `path` is the
    /// database's path relative to the root; `reason` says what and where.
    pub problems: Vec<Unverified>,
}

/// Reads every package database found under `root`.
pub fn read_installed(root: &Path) -> PackageScan {
    let mut lookups = vec![
        read_text_database(root, PackageManager::Dpkg, dpkg::STATUS, dpkg::parse),
        read_text_database(root, PackageManager::Apk, apk::INSTALLED, apk::parse),
    ];
    lookups.extend(rpm::read(root));
    let mut scan = assemble(lookups);
    scan.problems.extend(dpkg::pending_updates(root));
    scan
}

/// What a parser made of one database's content.
#[derive(Debug, Default)]
struct Parsed {
    packages: Vec<Package>,
    /// Reasons only: the caller knows which database they belong to.
    problems: Vec<String>,
}

/// A database that was found and at least partly read.
#[derive(Debug)]
struct Database {
    manager: PackageManager,
    /// Relative to the root, after resolving symlinks inside it.
    path: PathBuf,
    packages: Vec<Package>,
    problems: Vec<Unverified>,
}

/// The outcome of looking for one database.
#[derive(Debug)]
enum Lookup {
    /// Nothing there: the root does not use this package manager.
    Absent,
    Found(Database),
    /// Something is there but could not be read at all.
    Failed(Unverified),
}

/// Reads a database that is one text file, parsed by `parse`.
fn read_text_database(
    root: &Path,
    manager: PackageManager,
    relative: &str,
    parse: fn(&[u8]) -> Parsed,
) -> Lookup {
    let path = match resolve_file(root, Path::new(relative)) {
        Ok(Some(path)) => path,
        Ok(None) => return Lookup::Absent,
        Err(problem) => return Lookup::Failed(problem),
    };
    let content = match fs::read(root.join(&path)) {
        Ok(content) => content,
        Err(e) => {
            return Lookup::Failed(problem(
                &path,
                format!("cannot read {manager} database: {e}"),
            ));
        }
    };
    let parsed = parse(&content);
    Lookup::Found(Database {
        manager,
        problems: parsed
            .problems
            .into_iter()
            .map(|reason| problem(&path, reason))
            .collect(),
        packages: parsed.packages,
        path,
    })
}

/// Merges what every lookup found into one sorted, duplicate-free scan.
fn assemble(lookups: Vec<Lookup>) -> PackageScan {
    let mut scan = PackageScan::default();
    // Each parser already drops duplicates within its database; this catches
    // the same package listed by two databases of one manager (say a stale
    // copy under a second rpm database path). The first database wins.
    let mut seen: HashMap<(PackageManager, String, String), PathBuf> = HashMap::new();
    for lookup in lookups {
        let database = match lookup {
            Lookup::Absent => continue,
            Lookup::Failed(problem) => {
                scan.problems.push(problem);
                continue;
            }
            Lookup::Found(database) => database,
        };
        scan.problems.extend(database.problems);
        scan.databases.push(PackageDatabase {
            manager: database.manager,
            path: database.path.to_string_lossy().into_owned(),
            package_count: u32::try_from(database.packages.len()).unwrap_or(u32::MAX),
        });
        for package in database.packages {
            let key = (
                package.manager,
                package.name.clone(),
                package.architecture.clone(),
            );
            if let Some(first) = seen.get(&key) {
                scan.problems.push(problem(
                    &database.path,
                    format!(
                        "package {} ({}) is also listed by {}; skipped",
                        package.name,
                        package.architecture,
                        first.display()
                    ),
                ));
                continue;
            }
            seen.insert(key, database.path.clone());
            scan.packages.push(package);
        }
    }
    scan.packages.sort_by(|a, b| a.key().cmp(&b.key()));
    scan.databases
        .sort_by(|a, b| (a.manager, &a.path).cmp(&(b.manager, &b.path)));
    scan
}

/// A problem about a root-relative path.
fn problem(path: &Path, reason: impl Into<String>) -> Unverified {
    Unverified {
        path: path.as_os_str().as_bytes().into(),
        reason: reason.into(),
    }
}

/// Resolves `relative` inside `root` and checks that it is a regular file.
///
/// `Ok(None)` means it does not exist. A FIFO or device would block or
/// misbehave when read, and a directory cannot be parsed, so anything other
/// than a regular file is a problem.
fn resolve_file(root: &Path, relative: &Path) -> Result<Option<PathBuf>, Unverified> {
    let path = match resolve_in_root(root, relative) {
        Ok(Some(path)) => path,
        Ok(None) => return Ok(None),
        Err(e) => return Err(problem(relative, format!("cannot look up database: {e}"))),
    };
    match fs::symlink_metadata(root.join(&path)) {
        Ok(meta) if meta.is_file() => Ok(Some(path)),
        Ok(_) => Err(problem(&path, "database is not a regular file; not read")),
        Err(e) => Err(problem(&path, format!("cannot look up database: {e}"))),
    }
}

/// How many symlinks one lookup may follow, as Linux allows (`ELOOP`).
const MAX_SYMLINKS: u32 = 40;

/// Where `relative` leads inside `root`, as a process chrooted into `root`
/// would see it: symlinks are followed, but an absolute target restarts at
/// the root and `..` never climbs above it. `Ok(None)` if it does not exist.
///
/// `root.join(relative)` would let the kernel follow an absolute symlink out
/// of the root, to the build machine's own database. The root is not expected
/// to change while it is read, so checking then opening is good enough here.
fn resolve_in_root(root: &Path, relative: &Path) -> io::Result<Option<PathBuf>> {
    // Components still to walk, last first. `..` stands for a parent step:
    // a normal component can never be named that.
    let mut pending: Vec<OsString> = Vec::new();
    push_components(&mut pending, relative);
    let mut resolved = PathBuf::new();
    let mut followed = 0;
    while let Some(name) = pending.pop() {
        if name == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&name);
        let meta = match fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) => meta,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        if !meta.file_type().is_symlink() {
            resolved = candidate;
            continue;
        }
        followed += 1;
        if followed > MAX_SYMLINKS {
            return Err(io::Error::other(format!(
                "too many levels of symbolic links at {}",
                candidate.display()
            )));
        }
        let target = fs::read_link(root.join(&candidate))?;
        if target.has_root() {
            resolved.clear();
        }
        push_components(&mut pending, &target);
    }
    Ok(Some(resolved))
}

/// Pushes `path`'s components onto a stack so that the first pops first.
fn push_components(stack: &mut Vec<OsString>, path: &Path) {
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => stack.push(name.to_owned()),
            Component::ParentDir => stack.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// Whether a lookup error means "not there" rather than "cannot tell".
fn is_absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    pub(super) fn write(root: &Path, relative: &str, content: &[u8]) {
        let path = root.join(relative);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    const ONE_DPKG: &[u8] =
        b"Package: hello\nStatus: install ok installed\nVersion: 1.0\nArchitecture: amd64\n";

    #[test]
    fn empty_root_has_nothing() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(read_installed(root.path()), PackageScan::default());
    }

    #[test]
    fn empty_status_file_is_a_database_with_no_packages() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "var/lib/dpkg/status", b"");
        let scan = read_installed(root.path());
        assert!(scan.packages.is_empty());
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(
            scan.databases,
            vec![PackageDatabase {
                manager: PackageManager::Dpkg,
                path: "var/lib/dpkg/status".into(),
                package_count: 0,
            }]
        );
    }

    #[test]
    fn packages_from_several_managers_are_sorted_by_key() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "var/lib/dpkg/status", ONE_DPKG);
        write(
            root.path(),
            "lib/apk/db/installed",
            b"P:zlib\nV:1.3-r0\nA:x86_64\n\nP:busybox\nV:1.36-r0\nA:x86_64\n",
        );
        let scan = read_installed(root.path());
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        let keys: Vec<_> = scan
            .packages
            .iter()
            .map(|p| (p.manager, p.name.as_str()))
            .collect();
        assert_eq!(
            keys,
            [
                (PackageManager::Dpkg, "hello"),
                (PackageManager::Apk, "busybox"),
                (PackageManager::Apk, "zlib"),
            ]
        );
        assert_eq!(scan.databases.len(), 2);
        assert_eq!(scan.databases[1].package_count, 2);
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "srv/dpkg/status", ONE_DPKG);
        fs::create_dir_all(root.path().join("var/lib")).unwrap();
        // Outside the root this would point at the machine's own database.
        symlink("/srv/dpkg", root.path().join("var/lib/dpkg")).unwrap();
        let scan = read_installed(root.path());
        assert_eq!(scan.packages.len(), 1);
        assert_eq!(scan.databases[0].path, "srv/dpkg/status");
    }

    #[test]
    fn dot_dot_cannot_climb_out_of_the_root() {
        let root = tempfile::tempdir().unwrap();
        write(root.path(), "status", ONE_DPKG);
        fs::create_dir_all(root.path().join("var/lib/dpkg")).unwrap();
        symlink(
            "../../../../../../../../../status",
            root.path().join("var/lib/dpkg/status"),
        )
        .unwrap();
        let scan = read_installed(root.path());
        assert_eq!(scan.packages.len(), 1);
        assert_eq!(scan.databases[0].path, "status");
    }

    #[test]
    fn a_symlink_loop_is_a_problem() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("var/lib/dpkg")).unwrap();
        symlink(
            "/var/lib/dpkg/status",
            root.path().join("var/lib/dpkg/status"),
        )
        .unwrap();
        let scan = read_installed(root.path());
        assert!(scan.databases.is_empty());
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(&*scan.problems[0].path, b"var/lib/dpkg/status");
        assert!(
            scan.problems[0].reason.contains("symbolic links"),
            "{:?}",
            scan.problems
        );
    }

    #[test]
    fn a_database_that_is_not_a_file_is_a_problem() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("var/lib/dpkg/status")).unwrap();
        let scan = read_installed(root.path());
        assert!(scan.databases.is_empty());
        assert_eq!(scan.problems.len(), 1);
        assert!(scan.problems[0].reason.contains("not a regular file"));
    }
}
