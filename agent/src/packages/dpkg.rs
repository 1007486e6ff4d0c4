//! dpkg's status database, `var/lib/dpkg/status` (Debian, Ubuntu).
//!
//! The file is a sequence of stanzas separated by empty lines. Each stanza is
//! a list of `Field: value` lines; a line starting with a space or tab
//! continues the previous field. The file also keeps packages that are
//! removed but whose configuration files remain, or that are half-installed,
//! so a package counts only when the state word of `Status: want flag state`
//! is `installed` (whatever is wanted of it: `hold ok installed` counts).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use driftwatch_proto::{Package, PackageManager, Unverified};

use super::{Parsed, problem, resolve_in_root};

/// Where the database lives, relative to the root.
pub(super) const STATUS: &str = "var/lib/dpkg/status";

/// dpkg's journal: a stanza per package changed since `status` was last
/// rewritten. dpkg folds it in on its next run.
const UPDATES: &str = "var/lib/dpkg/updates";

/// Parses a status file. Packages come out in file order; duplicates and
/// malformed stanzas are dropped with a problem each.
pub(super) fn parse(content: &[u8]) -> Parsed {
    let mut parsed = Parsed::default();
    // (name, architecture) -> line of the stanza that listed it first.
    let mut first_seen = HashMap::new();
    let mut stanza = Stanza::default();
    for (index, line) in content.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            std::mem::take(&mut stanza).finish(&mut parsed, &mut first_seen);
        } else {
            stanza.add_line(index + 1, line);
        }
    }
    stanza.finish(&mut parsed, &mut first_seen);
    parsed
}

/// A problem, if dpkg's journal holds changes not yet folded into `status`.
///
/// That happens when dpkg was interrupted. `dpkg-query` would apply them, but
/// this reader does not, so the package set it reports may be stale.
pub(super) fn pending_updates(root: &Path) -> Option<Unverified> {
    let dir = match resolve_in_root(root, Path::new(UPDATES)) {
        Ok(Some(dir)) => dir,
        Ok(None) => return None,
        Err(e) => return Some(problem(Path::new(UPDATES), format!("cannot look up: {e}"))),
    };
    let entries = match fs::read_dir(root.join(&dir)) {
        Ok(entries) => entries,
        Err(e) => return Some(problem(&dir, format!("cannot list dpkg's journal: {e}"))),
    };
    // Journal entries are named by sequence number; anything else (`tmp.i`)
    // is a write in progress, not a change.
    let pending = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            let name = entry.file_name();
            !name.is_empty() && name.as_encoded_bytes().iter().all(u8::is_ascii_digit)
        })
        .count();
    (pending > 0).then(|| {
        problem(
            &dir,
            format!(
                "{pending} dpkg journal entries are not yet merged into {STATUS} \
                 (dpkg was interrupted); the package set read from it may be stale"
            ),
        )
    })
}

/// The fields of one stanza that matter here, borrowed from the file.
#[derive(Debug, Default)]
struct Stanza<'a> {
    /// The line number of the stanza's first line; 0 while it has none.
    first_line: usize,
    package: Option<Field<'a>>,
    version: Option<Field<'a>>,
    architecture: Option<Field<'a>>,
    status: Option<Field<'a>>,
    /// Why the stanza cannot be trusted, if it cannot: the first fault wins.
    malformed: Option<String>,
    /// The first line that is not valid UTF-8.
    non_utf8_line: Option<usize>,
}

/// A field's value, trimmed, and the line it is on.
#[derive(Debug, Clone, Copy)]
struct Field<'a> {
    value: &'a [u8],
    line: usize,
}

impl Field<'_> {
    fn text(&self) -> String {
        String::from_utf8_lossy(self.value).into_owned()
    }
}

impl<'a> Stanza<'a> {
    fn add_line(&mut self, number: usize, line: &'a [u8]) {
        let continuation = matches!(line[0], b' ' | b'\t');
        if self.first_line == 0 {
            self.first_line = number;
            if continuation {
                self.malformed = Some(format!(
                    "line {number}: continuation line at the start of a stanza"
                ));
            }
        }
        if self.non_utf8_line.is_none() && std::str::from_utf8(line).is_err() {
            self.non_utf8_line = Some(number);
        }
        if self.malformed.is_some() || continuation {
            return;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            self.malformed = Some(format!(
                "line {number}: line is neither a field nor a continuation"
            ));
            return;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        // dpkg matches field names without regard to case.
        let slot = match name.to_ascii_lowercase().as_slice() {
            b"package" => &mut self.package,
            b"version" => &mut self.version,
            b"architecture" => &mut self.architecture,
            b"status" => &mut self.status,
            _ => return,
        };
        if slot.is_some() {
            self.malformed = Some(format!(
                "line {number}: second {} field in one stanza",
                String::from_utf8_lossy(name)
            ));
            return;
        }
        *slot = Some(Field {
            value,
            line: number,
        });
    }

    /// Adds the stanza's package to `parsed` if it is installed and sound.
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
                .push(format!("{reason}; stanza starting at line {first} skipped"));
            return;
        }
        let Some(package) = self.package.filter(|f| !f.value.is_empty()) else {
            parsed.problems.push(format!(
                "line {first}: stanza has no Package field; skipped"
            ));
            return;
        };
        let name = package.text();
        let Some(status) = self.status else {
            parsed.problems.push(format!(
                "line {first}: stanza for {name} has no Status field; skipped"
            ));
            return;
        };
        let words: Vec<&[u8]> = status
            .value
            .split(u8::is_ascii_whitespace)
            .filter(|w| !w.is_empty())
            .collect();
        let [_want, _flag, state] = words[..] else {
            parsed.problems.push(format!(
                "line {}: Status of {name} is not three words ({:?}); stanza skipped",
                status.line,
                status.text()
            ));
            return;
        };
        if state != b"installed" {
            return;
        }
        let Some(version) = self.version.filter(|f| !f.value.is_empty()) else {
            parsed.problems.push(format!(
                "line {first}: stanza for installed {name} has no Version field; skipped"
            ));
            return;
        };
        // Packages from before multi-arch may lack the field; dpkg-query
        // shows an empty architecture for them too.
        let architecture = self.architecture.map(|f| f.text()).unwrap_or_default();
        if let Some(earlier) = first_seen.get(&(name.clone(), architecture.clone())) {
            parsed.problems.push(format!(
                "line {first}: second stanza for {name}:{architecture} \
                 (first at line {earlier}); skipped"
            ));
            return;
        }
        first_seen.insert((name.clone(), architecture.clone()), first);
        parsed.packages.push(Package {
            manager: PackageManager::Dpkg,
            name,
            version: version.text(),
            architecture,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::read_installed;
    use std::collections::BTreeSet;
    use std::process::Command;

    fn installed(name: &str, version: &str, architecture: &str) -> Package {
        Package {
            manager: PackageManager::Dpkg,
            name: name.into(),
            version: version.into(),
            architecture: architecture.into(),
        }
    }

    fn names(parsed: &Parsed) -> Vec<&str> {
        parsed.packages.iter().map(|p| p.name.as_str()).collect()
    }

    /// This machine's own status file, read as if it were an image's.
    #[test]
    fn reads_this_machines_real_status_file() {
        let Ok(content) = fs::read("/var/lib/dpkg/status") else {
            eprintln!("no /var/lib/dpkg/status on this machine; real-file test skipped");
            return;
        };
        let root = tempfile::tempdir().unwrap();
        let admin_dir = root.path().join("var/lib/dpkg");
        fs::create_dir_all(&admin_dir).unwrap();
        fs::write(admin_dir.join("status"), &content).unwrap();

        let scan = read_installed(root.path());
        assert!(scan.problems.is_empty(), "{:?}", scan.problems);
        assert_eq!(scan.databases.len(), 1);
        assert_eq!(scan.databases[0].path, STATUS);
        assert_eq!(
            scan.databases[0].package_count as usize,
            scan.packages.len()
        );

        // An independent count: every installed stanza has exactly one
        // Status line, and its state word ends it.
        let expected = String::from_utf8_lossy(&content)
            .lines()
            .filter(|l| l.starts_with("Status:") && l.trim_end().ends_with(" installed"))
            .count();
        assert!(expected > 0);
        assert_eq!(scan.packages.len(), expected);

        // dpkg's own reading of the same copy, where dpkg-query exists.
        let query = Command::new("dpkg-query")
            .arg(format!("--admindir={}", admin_dir.display()))
            .args([
                "-W",
                "-f",
                "${db:Status-Status}\t${Package}\t${Architecture}\t${Version}\n",
            ])
            .output();
        let Some(output) = query.ok().filter(|o| o.status.success()) else {
            eprintln!("dpkg-query unavailable; compared with the independent count only");
            return;
        };
        let dpkg_says: BTreeSet<(String, String, String)> = String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                (fields[0] == "installed").then(|| {
                    (
                        fields[1].to_owned(),
                        fields[2].to_owned(),
                        fields[3].to_owned(),
                    )
                })
            })
            .collect();
        let we_say: BTreeSet<(String, String, String)> = scan
            .packages
            .iter()
            .map(|p| (p.name.clone(), p.architecture.clone(), p.version.clone()))
            .collect();
        assert_eq!(we_say, dpkg_says);
    }

    #[test]
    fn only_installed_packages_count() {
        let parsed = parse(
            b"Package: kept\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\n\
              Package: held\nStatus: hold ok installed\nVersion: 2\nArchitecture: amd64\n\n\
              Package: removed\nStatus: deinstall ok config-files\nVersion: 3\nArchitecture: amd64\n\n\
              Package: purged\nStatus: purge ok not-installed\nArchitecture: amd64\n\n\
              Package: broken\nStatus: install reinstreq half-installed\nVersion: 4\nArchitecture: amd64\n\n\
              Package: unpacked\nStatus: install ok unpacked\nVersion: 5\nArchitecture: amd64\n",
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(
            parsed.packages,
            [
                installed("kept", "1", "all"),
                installed("held", "2", "amd64")
            ]
        );
    }

    #[test]
    fn multi_arch_packages_are_distinct() {
        let parsed = parse(
            b"Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nMulti-Arch: same\nVersion: 2.36-9\n\n\
              Package: libc6\nStatus: install ok installed\nArchitecture: i386\nMulti-Arch: same\nVersion: 2.36-9\n",
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(
            parsed.packages,
            [
                installed("libc6", "2.36-9", "amd64"),
                installed("libc6", "2.36-9", "i386")
            ]
        );
    }

    #[test]
    fn continuation_lines_and_field_case_are_handled() {
        let parsed = parse(
            b"package: tool\nstatus: install ok installed\nversion: 1:2.0-1\narchitecture: arm64\n\
              Description: a tool\n that does things\n .\n\tand more\nConffiles:\n /etc/tool.conf abc\n\n\n\n",
        );
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        assert_eq!(parsed.packages, [installed("tool", "1:2.0-1", "arm64")]);
    }

    #[test]
    fn each_malformed_stanza_is_skipped_with_a_problem() {
        let content =
            b"Package: good-one\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n\n\
            Status: install ok installed\nVersion: 1\nArchitecture: all\n\n\
            Package: no-version\nStatus: install ok installed\nArchitecture: all\n\n\
            Package: no-colon\nStatus: install ok installed\nthis line is garbage\nVersion: 1\n\n \
            leading continuation\nPackage: continued\nStatus: install ok installed\nVersion: 1\n\n\
            Package: good-one\nStatus: install ok installed\nVersion: 2\nArchitecture: all\n\n\
            Package: two-versions\nStatus: install ok installed\nVersion: 1\nVersion: 2\n\n\
            Package: no-status\nVersion: 1\n\n\
            Package: odd-status\nStatus: installed\nVersion: 1\n\n\
            Package: good-two\nStatus: install ok installed\nVersion: 3\nArchitecture: all\n";
        let parsed = parse(content);
        assert_eq!(names(&parsed), ["good-one", "good-two"]);
        assert_eq!(parsed.packages[0].version, "1", "the first stanza wins");
        assert_eq!(
            parsed.problems,
            [
                "line 6: stanza has no Package field; skipped",
                "line 10: stanza for installed no-version has no Version field; skipped",
                "line 16: line is neither a field nor a continuation; stanza starting at line 14 skipped",
                "line 19: continuation line at the start of a stanza; stanza starting at line 19 skipped",
                "line 24: second stanza for good-one:all (first at line 1); skipped",
                "line 32: second Version field in one stanza; stanza starting at line 29 skipped",
                "line 34: stanza for no-status has no Status field; skipped",
                "line 38: Status of odd-status is not three words (\"installed\"); stanza skipped",
            ]
        );
    }

    #[test]
    fn non_utf8_bytes_are_read_lossily_and_reported() {
        let parsed = parse(
            b"Package: caf\xe9\nStatus: install ok installed\nVersion: 1\nArchitecture: all\n",
        );
        assert_eq!(names(&parsed), ["caf\u{fffd}"]);
        assert_eq!(
            parsed.problems,
            ["line 1: not valid UTF-8; read with replacement characters"]
        );
    }

    #[test]
    fn a_missing_architecture_is_empty() {
        let parsed = parse(b"Package: old\nStatus: install ok installed\nVersion: 1\n");
        assert!(parsed.problems.is_empty());
        assert_eq!(parsed.packages, [installed("old", "1", "")]);
    }

    #[test]
    fn unmerged_journal_entries_are_reported() {
        let root = tempfile::tempdir().unwrap();
        let admin_dir = root.path().join("var/lib/dpkg");
        fs::create_dir_all(admin_dir.join("updates")).unwrap();
        fs::write(admin_dir.join("status"), b"").unwrap();
        fs::write(admin_dir.join("updates/tmp.i"), b"").unwrap();
        assert!(read_installed(root.path()).problems.is_empty());

        fs::write(admin_dir.join("updates/0000"), b"Package: x\n").unwrap();
        let scan = read_installed(root.path());
        assert_eq!(scan.problems.len(), 1);
        assert_eq!(&*scan.problems[0].path, UPDATES.as_bytes());
        assert!(
            scan.problems[0]
                .reason
                .starts_with("1 dpkg journal entries")
        );
    }
}
