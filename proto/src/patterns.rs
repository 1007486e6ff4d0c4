//! Path patterns with the one matching rule every driftwatch policy uses.
//!
//! Patterns are globs over paths relative to the root (`*` stays within one
//! path component, `**` crosses them). A pattern matches a path when it
//! matches the path itself or any of its ancestors, so `usr/bin` covers
//! everything below `usr/bin`. The agent's exclusions and runtime zones and
//! the collector's critical paths all mean the same thing by a pattern.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

/// A compiled set of path patterns.
#[derive(Debug, Clone, Default)]
pub struct PathPatterns {
    set: GlobSet,
}

impl PathPatterns {
    /// Compiles `patterns`; a leading `/` is accepted and ignored.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<PathPatterns, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            builder.add(glob(pattern.as_ref().trim_start_matches('/'))?);
        }
        Ok(PathPatterns {
            set: builder.build()?,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Whether the path itself matches, ignoring its ancestors: for walks
    /// that have already checked the ancestors on the way down.
    pub fn matches_exactly(&self, path: &[u8]) -> bool {
        !self.set.is_empty() && self.set.is_match(Path::new(OsStr::from_bytes(path)))
    }

    /// Whether the path or any of its ancestors matches. Matching each
    /// ancestor gives prefix semantics to plain directory names while still
    /// allowing globs in any component.
    pub fn matches(&self, path: &[u8]) -> bool {
        if self.set.is_empty() || path.is_empty() {
            return false;
        }
        let mut end = path.len();
        loop {
            if self.matches_exactly(&path[..end]) {
                return true;
            }
            match path[..end].iter().rposition(|&b| b == b'/') {
                Some(slash) => end = slash,
                None => return false,
            }
        }
    }
}

/// Normalises one pattern as written in a policy (strips leading and
/// trailing `/`), or says why it cannot be used: patterns that could never
/// match a relative path, would reach outside the root, or would cover the
/// whole root.
pub fn normalise(pattern: &str) -> Result<String, &'static str> {
    let trimmed = pattern.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        return Err("matches the whole root");
    }
    if trimmed
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err("empty, '.' or '..' path components are not allowed");
    }
    // A pattern whose first component matches any name would cover
    // everything: the whole root.
    let first = trimmed.split('/').next().unwrap_or_default();
    if first.chars().all(|c| matches!(c, '*' | '?')) {
        return Err("its first component matches every name; that would cover the whole root");
    }
    if trimmed.chars().any(char::is_control) {
        return Err("control characters are not allowed");
    }
    // globset's negated classes match '/', crossing directories.
    if trimmed.contains("[!") || trimmed.contains("[^") {
        return Err("negated character classes ([!...], [^...]) are not supported");
    }
    glob(trimmed).map_err(|_| "not a valid glob")?;
    Ok(trimmed.to_string())
}

/// Compiles one pattern the way every policy does.
pub fn glob(pattern: &str) -> Result<Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_covers_everything_below_it() {
        let p = PathPatterns::new(&["usr/bin", "etc/sudoers*", "/etc/ssh"]).unwrap();
        assert!(p.matches(b"usr/bin"));
        assert!(p.matches(b"usr/bin/ls"));
        assert!(p.matches(b"usr/bin/sub/dir/x"));
        assert!(!p.matches(b"usr/bin2"));
        assert!(!p.matches(b"usr"));
        assert!(p.matches(b"etc/sudoers"));
        assert!(p.matches(b"etc/sudoers.d/90-cloud"));
        assert!(p.matches(b"etc/ssh/sshd_config"));
        assert!(!p.matches(b"etc/sshd"));
        assert!(p.matches(b"usr/bin/\xff\xfe"), "non-UTF-8 names match");
    }

    #[test]
    fn star_stays_within_one_component() {
        let p = PathPatterns::new(&["etc/*.conf"]).unwrap();
        assert!(p.matches(b"etc/a.conf"));
        assert!(!p.matches(b"etc/x/a.conf"));
        assert!(
            PathPatterns::new(&["a/**/b"])
                .unwrap()
                .matches(b"a/x/y/b/c")
        );
    }

    #[test]
    fn empty_matches_nothing_and_bad_globs_are_errors() {
        assert!(!PathPatterns::default().matches(b"x"));
        assert!(PathPatterns::new(&["a/[b"]).is_err());
    }

    #[test]
    fn normalise_refuses_what_could_cover_everything_or_escape() {
        assert_eq!(normalise("/usr/bin/").unwrap(), "usr/bin");
        for bad in [
            "/",
            "*",
            "*/x",
            "a/../b",
            "a//b",
            "a/[!x]",
            "a/[b",
            "a\nb\u{1}",
        ] {
            assert!(normalise(bad).is_err(), "{bad}");
        }
    }
}
