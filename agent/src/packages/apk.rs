//! apk's installed database, `lib/apk/db/installed` (Alpine).
//!
//! One record per installed package, separated by empty lines. Every line is
//! a one-letter key, a colon and a value: `P:` name, `V:` version, `A:`
//! architecture. The other keys (checksums, dependencies, the file list) are
//! not needed for the package set and are skipped.

use std::collections::HashMap;

use driftwatch_proto::{Package, PackageManager};

use super::Parsed;

/// Where the database lives, relative to the root.
pub(super) const INSTALLED: &str = "lib/apk/db/installed";

/// Parses an installed database. Packages come out in file order;
/// duplicates and malformed records are dropped with a problem each.
pub(super) fn parse(content: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    // (name, architecture) -> line of the record that listed it first.
    let mut first_seen = HashMap::new();
    let mut record = Record::default();
    for (index, line) in content.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            std::mem::take(&mut record).finish(&mut parsed, &mut first_seen);
        } else {
            record.add_line(index + 1, line);
        }
    }
    record.finish(&mut parsed, &mut first_seen);
    parsed
}

/// The keys of one record that matter here, borrowed from the file.
#[derive(Debug, Default)]
struct Record<'a> {
    /// The line number of the record's first line; 0 while it has none.
    first_line: usize,
    name: Option<&'a [u8]>,
    version: Option<&'a [u8]>,
    architecture: Option<&'a [u8]>,
    /// Why the record cannot be trusted, if it cannot: the first fault wins.
    malformed: Option<String>,
    /// The first line that is not valid UTF-8.
    non_utf8_line: Option<usize>,
}

impl<'a> Record<'a> {
    fn add_line(&mut self, number: usize, line: &'a [u8]) {
        if self.first_line == 0 {
            self.first_line = number;
        }
        if self.non_utf8_line.is_none() && std::str::from_utf8(line).is_err() {
            self.non_utf8_line = Some(number);
        }
        if self.malformed.is_some() {
            return;
        }
        let [key, b':', value @ ..] = line else {
            self.malformed = Some(format!("line {number}: not a `K:value` line"));
            return;
        };
        let slot = match key {
            b'P' => &mut self.name,
            b'V' => &mut self.version,
            b'A' => &mut self.architecture,
            _ => return,
        };
        if slot.is_some() {
            self.malformed = Some(format!(
                "line {number}: second {}: line in one record",
                char::from(*key)
            ));
            return;
        }
        *slot = Some(value);
    }

    /// Adds the record's package to `parsed` if it is sound.
    fn finish(self, parsed: &mut Parsed, first_seen: &mut HashMap<(String, String), usize>) {
        let first = self.first_line;
        if first == 0 {
            return;
        }
        if let Some(line) = self.non_utf8_line {
            parsed.problems.push(format!(
                "line {line}: not valid UTF-8; read with replacement characters"
            ));
        }
        if let Some(reason) = self.malformed {
            parsed
                .problems
                .push(format!("{reason}; record starting at line {first} skipped"));
            return;
        }
        let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
        let Some(name) = self.name.filter(|v| !v.is_empty()).map(text) else {
            parsed.problems.push(format!(
                "line {first}: record has no P: (name) line; skipped"
            ));
            return;
        };
        let Some(version) = self.version.filter(|v| !v.is_empty()).map(text) else {
            parsed.problems.push(format!(
                "line {first}: record for {name} has no V: (version) line; skipped"
            ));
            return;
        };
        // Databases written by old apk versions may lack `A:`.
        let architecture = self.architecture.map(text).unwrap_or_default();
        if let Some(earlier) = first_seen.get(&(name.clone(), architecture.clone())) {
            parsed.problems.push(format!(
                "line {first}: second record for {name} ({architecture}) \
                 (first at line {earlier}); skipped"
            ));
            return;
        }
        first_seen.insert((name.clone(), architecture.clone()), first);
        parsed.packages.push(Package {
            manager: PackageManager::Apk,
            name,
            version,
            architecture,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::read_installed;
    use driftwatch_proto::PackageDatabase;

    fn package(name: &str, version: &str, architecture: &str) -> Package {
        Package {
            manager: PackageManager::Apk,
            name: name.into(),
            version: version.into(),
            architecture: architecture.into(),
        }
    }

    /// Shaped like a real Alpine database, file lists and all.
    const INSTALLED_DB: &[u8] = b"\
C:Q1KlxJ3t2Tv0DOGEwLV9uw3wVdn+s=
P:musl
V:1.2.5-r0
A:x86_64
S:411323
I:651264
T:the musl c library (libc) implementation
U:https://musl.libc.org/
L:MIT
o:musl
m:Natanael Copa <ncopa@alpinelinux.org>
t:1711469939
c:a7d42f1e6fa7e58a4a9d1e1b3b3d60ca6a7b0d40
p:so:libc.musl-x86_64.so.1=1
F:lib
R:ld-musl-x86_64.so.1
a:0:0:755
Z:Q1v7cjD+hw7Ix+ZYEhwN5y1z4c/tA=
R:libc.musl-x86_64.so.1

C:Q1Cvwy4qs6SGNeOR5Bv0EGa3+4hXs=
P:busybox
V:1.36.1-r28
A:x86_64
D:so:libc.musl-x86_64.so.1
F:bin
R:busybox

C:Q1malformedrecordhasnoname=
V:0.1-r0
A:x86_64

C:Q1KNYgXYrOa30tWf2NrJxyOxoxJSA=
P:alpine-baselayout-data
V:3.6.5-r0
A:x86_64
r:alpine-baselayout
F:etc
R:fstab
";

    #[test]
    fn reads_packages_and_skips_a_malformed_record() {
        let root = tempfile::tempdir().unwrap();
        crate::packages::tests::write(root.path(), INSTALLED, INSTALLED_DB);
        let scan = read_installed(root.path());
        assert_eq!(
            scan.packages,
            [
                package("alpine-baselayout-data", "3.6.5-r0", "x86_64"),
                package("busybox", "1.36.1-r28", "x86_64"),
                package("musl", "1.2.5-r0", "x86_64"),
            ]
        );
        assert_eq!(
            scan.databases,
            [PackageDatabase {
                manager: PackageManager::Apk,
                path: INSTALLED.into(),
                package_count: 3,
            }]
        );
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(&*scan.problems[0].path, INSTALLED.as_bytes());
        assert_eq!(
            scan.problems[0].reason,
            "line 29: record has no P: (name) line; skipped"
        );
    }

    #[test]
    fn each_malformed_record_is_skipped_with_a_problem() {
        let parsed = parse(
            b"P:ok\nV:1\nA:aarch64\n\nP:no-version\nA:aarch64\n\n\
              P:garbage\nV:1\nnot a key line\n\nP:ok\nV:2\nA:aarch64\n\n\
              P:twice\nP:twice\nV:1\n\nP:caf\xe9\nV:1\n",
        );
        let names: Vec<&str> = parsed.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["ok", "caf\u{fffd}"]);
        assert_eq!(parsed.packages[0].version, "1", "the first record wins");
        assert_eq!(
            parsed.problems,
            [
                "line 5: record for no-version has no V: (version) line; skipped",
                "line 10: not a `K:value` line; record starting at line 8 skipped",
                "line 12: second record for ok (aarch64) (first at line 1); skipped",
                "line 17: second P: line in one record; record starting at line 16 skipped",
                "line 20: not valid UTF-8; read with replacement characters",
            ]
        );
    }
}
