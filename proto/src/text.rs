//! Bytes and errors as text for people, the same way in every binary.

/// Invalid UTF-8 becomes `\xNN`; control characters and `\` are escaped, so
/// a hostile file or package name cannot rewrite an operator's terminal.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// A relative path for a terminal: the root is `.`, bytes escaped as
/// [`escape_bytes`] does.
pub fn display_path(path: &[u8]) -> String {
    if path.is_empty() {
        return ".".to_string();
    }
    escape_bytes(path)
}

/// An error with its causes, which is where transport and I/O errors say
/// what actually went wrong; a cause already in the text is not repeated.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(display_path(b""), ".");
        assert_eq!(display_path(b"ok/\xff\x1bn\\"), "ok/\\xff\\u{1b}n\\\\");
        let io = std::io::Error::other("disk on fire");
        let outer = std::io::Error::other(io);
        assert_eq!(error_chain(&outer), "disk on fire");
    }
}
