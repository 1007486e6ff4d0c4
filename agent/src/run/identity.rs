//! Who this host is, as told to the collector in `Hello`.
//!
//! The host id must stay the same for the life of the instance and differ
//! between instances, since the collector keys everything (sequence
//! numbers included) by it. `/etc/machine-id` under the verified root is
//! exactly that on systemd hosts; a hostname is the fallback, and
//! `--host-id` overrides both (for images without a machine id).
//!
//! The machine id is read from the root being verified, which may be
//! hostile: it is opened component by component with `O_NOFOLLOW` (a
//! symlink to a secret is not read), non-blocking (a FIFO cannot hang the
//! agent), and only a short, printable value is accepted.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};

/// The longest host id accepted: the collector stores it as a key.
pub const MAX_HOST_ID_LEN: usize = 255;

/// A host id that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHostId {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes, more than {MAX_HOST_ID_LEN}")]
    TooLong(usize),
    #[error("is not UTF-8")]
    NotUtf8,
    #[error("contains a control or non-printable character")]
    NotPrintable,
}

/// Why no host identity could be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("--host-id {0}")]
    InvalidFlag(InvalidHostId),
    #[error("no usable host id: {machine_id} and the hostname {hostname}; give --host-id")]
    NoHostId {
        machine_id: String,
        hostname: InvalidHostId,
    },
}

/// Where the host id came from, for the startup log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostIdSource {
    Flag,
    MachineId,
    /// The machine id could not be used, for this reason.
    Hostname {
        machine_id_problem: String,
    },
}

/// The host as the collector knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub host_id: String,
    pub hostname: String,
    /// Seconds since the epoch; 0 when unknown.
    pub boot_time_unix: i64,
    pub source: HostIdSource,
}

/// Establishes the host identity: `--host-id`, else `<root>/etc/machine-id`,
/// else the hostname. Boot time and hostname are the running kernel's.
pub fn resolve(host_id_flag: Option<&str>, root: &Path) -> Result<Identity, IdentityError> {
    let hostname = hostname();
    let boot_time_unix = boot_time_unix().unwrap_or(0);
    let (host_id, source) = match host_id_flag {
        Some(flag) => (
            validate_host_id(flag.as_bytes()).map_err(IdentityError::InvalidFlag)?,
            HostIdSource::Flag,
        ),
        None => match read_machine_id(root) {
            Ok(id) => (id, HostIdSource::MachineId),
            Err(problem) => match validate_host_id(hostname.as_bytes()) {
                Ok(id) => (
                    id,
                    HostIdSource::Hostname {
                        machine_id_problem: problem.clone(),
                    },
                ),
                Err(e) => {
                    return Err(IdentityError::NoHostId {
                        machine_id: problem,
                        hostname: e,
                    });
                }
            },
        },
    };
    Ok(Identity {
        host_id,
        hostname,
        boot_time_unix,
        source,
    })
}

/// A host id as given, with surrounding whitespace (a machine-id file ends
/// in a newline) trimmed.
pub fn validate_host_id(raw: &[u8]) -> Result<String, InvalidHostId> {
    let text = std::str::from_utf8(raw).map_err(|_| InvalidHostId::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(InvalidHostId::Empty);
    }
    if text.len() > MAX_HOST_ID_LEN {
        return Err(InvalidHostId::TooLong(text.len()));
    }
    if text.chars().any(|c| c.is_control() || is_invisible(c)) {
        return Err(InvalidHostId::NotPrintable);
    }
    Ok(text.to_string())
}

/// Characters that print as nothing and would let two ids look the same.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2060}'..='\u{2064}' | '\u{feff}'
    )
}

/// `<root>/etc/machine-id`, validated; the error says why it is unusable.
pub fn read_machine_id(root: &Path) -> Result<String, String> {
    let path = root.join("etc/machine-id");
    let bytes = read_no_follow(root).map_err(|e| format!("{}: {e}", path.display()))?;
    validate_host_id(&bytes).map_err(|e| format!("{} {e}", path.display()))
}

/// Reads `etc/machine-id` under `root` without following a symlink at
/// `etc` or at `machine-id`, and at most a little more than a valid id.
fn read_no_follow(root: &Path) -> io::Result<Vec<u8>> {
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let root = rustix::fs::open(root, dir_flags, Mode::empty())?;
    let etc = rustix::fs::openat(&root, "etc", dir_flags | OFlags::NOFOLLOW, Mode::empty())?;
    let file = rustix::fs::openat(
        &etc,
        "machine-id",
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&file)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    File::from(file)
        .take(MAX_HOST_ID_LEN as u64 * 2)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The running kernel's host name.
pub fn hostname() -> String {
    String::from_utf8_lossy(rustix::system::uname().nodename().to_bytes()).into_owned()
}

/// When the running host booted, from `/proc/stat` (the host's, whatever
/// root is verified: a container shares the host's boot).
pub fn boot_time_unix() -> Option<i64> {
    parse_btime(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The `btime` line of `/proc/stat`.
pub fn parse_btime(stat: &str) -> Option<i64> {
    stat.lines()
        .find_map(|line| line.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with_machine_id(content: &[u8]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/machine-id"), content).unwrap();
        dir
    }

    #[test]
    fn the_machine_id_is_the_host_id() {
        let root = root_with_machine_id(b"0123456789abcdef0123456789abcdef\n");
        let id = resolve(None, root.path()).unwrap();
        assert_eq!(id.host_id, "0123456789abcdef0123456789abcdef");
        assert_eq!(id.source, HostIdSource::MachineId);
        assert_eq!(id.hostname, hostname());
        assert!(id.boot_time_unix > 0);
    }

    #[test]
    fn the_flag_wins_and_must_be_valid() {
        let root = root_with_machine_id(b"abc\n");
        let id = resolve(Some("web-42"), root.path()).unwrap();
        assert_eq!(
            (id.host_id.as_str(), id.source),
            ("web-42", HostIdSource::Flag)
        );
        assert!(matches!(
            resolve(Some("a\u{7}b"), root.path()),
            Err(IdentityError::InvalidFlag(InvalidHostId::NotPrintable))
        ));
        assert!(matches!(
            resolve(Some("  "), root.path()),
            Err(IdentityError::InvalidFlag(InvalidHostId::Empty))
        ));
    }

    #[test]
    fn an_unusable_machine_id_falls_back_to_the_hostname() {
        let cases: [&[u8]; 4] = [b"\n", b"\xff\xfe", b"id\x1b[2J", &[b'a'; 300]];
        for content in cases {
            let root = root_with_machine_id(content);
            let id = resolve(None, root.path()).unwrap();
            assert_eq!(id.host_id, hostname().trim(), "{content:?}");
            assert!(
                matches!(id.source, HostIdSource::Hostname { .. }),
                "{content:?}"
            );
        }
        // Missing altogether.
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            resolve(None, empty.path()).unwrap().source,
            HostIdSource::Hostname { .. }
        ));
    }

    #[test]
    fn a_machine_id_behind_a_symlink_is_not_read() {
        let secret = tempfile::tempdir().unwrap();
        std::fs::write(secret.path().join("token"), b"s3cr3t-value\n").unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        std::os::unix::fs::symlink(
            secret.path().join("token"),
            root.path().join("etc/machine-id"),
        )
        .unwrap();
        let id = resolve(None, root.path()).unwrap();
        assert_ne!(id.host_id, "s3cr3t-value");
        // Nor through a symlinked etc.
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(secret.path().join("etc")).unwrap();
        std::fs::write(secret.path().join("etc/machine-id"), b"elsewhere\n").unwrap();
        std::os::unix::fs::symlink(secret.path().join("etc"), root.path().join("etc")).unwrap();
        assert_ne!(resolve(None, root.path()).unwrap().host_id, "elsewhere");
    }

    #[test]
    fn a_fifo_machine_id_does_not_hang() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("etc")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.path().join("etc/machine-id"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        assert!(read_machine_id(root.path()).is_err());
    }

    #[test]
    fn btime_is_parsed_from_proc_stat() {
        let stat = "cpu  1 2 3\nintr 5\nbtime 1763712000\nprocesses 9\n";
        assert_eq!(parse_btime(stat), Some(1_763_712_000));
        assert_eq!(parse_btime("cpu 1\n"), None);
    }
}
