//! How raw byte paths are shown.
//!
//! Paths on Linux are bytes, and a manifest keeps them exactly. People and
//! JSON consumers get text: [`display`] for terminals, and [`JsonPath`] for
//! JSON, which adds `path_base64` with the exact bytes whenever the name is
//! not valid UTF-8, so nothing is lost.

use base64::Engine;

pub use driftwatch_proto::text::{display_path as display, escape_bytes};

/// Text from the host or a manifest (package names, versions, reasons,
/// provenance) for a terminal: control characters are escaped like paths, so
/// a hostile package name cannot rewrite the operator's screen.
pub fn escape(text: &str) -> String {
    escape_bytes(text.as_bytes())
}

/// The JSON form of a path: `path` always (lossy for invalid UTF-8, the
/// root as `.`), and `path_base64` with the exact bytes when `path` is lossy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct JsonPath {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_base64: Option<String>,
}

impl JsonPath {
    pub fn new(path: &[u8]) -> JsonPath {
        if path.is_empty() {
            return JsonPath {
                path: ".".into(),
                path_base64: None,
            };
        }
        match std::str::from_utf8(path) {
            Ok(text) => JsonPath {
                path: text.to_string(),
                path_base64: None,
            },
            Err(_) => JsonPath {
                path: String::from_utf8_lossy(path).into_owned(),
                path_base64: Some(base64::engine::general_purpose::STANDARD.encode(path)),
            },
        }
    }
}

/// A list of unverified paths as JSON: each its path (as [`JsonPath`]) and
/// the reason.
pub fn unverified_json(list: &[driftwatch_proto::Unverified]) -> Vec<serde_json::Value> {
    list.iter()
        .map(|u| {
            let mut v = serde_json::to_value(JsonPath::new(&u.path)).expect("plain struct");
            v["reason"] = u.reason.clone().into();
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays_escaped() {
        assert_eq!(display(b""), ".");
        assert_eq!(display(b"etc/passwd"), "etc/passwd");
        assert_eq!(display(b"caf\xe9\n"), "caf\\xe9\\n");
        assert_eq!(escape("evil\x1b[2Kpkg"), "evil\\u{1b}[2Kpkg");
    }

    #[test]
    fn json_is_lossless() {
        let p = JsonPath::new(b"caf\xe9");
        assert_eq!(p.path, "caf\u{fffd}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(p.path_base64.unwrap())
            .unwrap();
        assert_eq!(bytes, b"caf\xe9");
        assert!(JsonPath::new("café".as_bytes()).path_base64.is_none());
    }
}
