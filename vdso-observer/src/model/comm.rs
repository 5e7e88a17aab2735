//! How a process name is shown everywhere (table, JSON, metrics).

use vdso_observer_common::COMM_LEN;

/// A process name as shown everywhere (table, JSON, metrics): the bytes up to the
/// first NUL, printable UTF-8 kept, backslash doubled, and anything else
/// (control characters, invalid UTF-8) written as `\xNN`, so that no name can
/// break a line, a column or a label, and two different names never look alike.
pub fn display_comm(raw: &[u8]) -> String {
    let raw = &raw[..raw
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(raw.len())
        .min(COMM_LEN)];
    // The common case, printable ASCII, as it is (a drain names thousands).
    if raw
        .iter()
        .all(|&b| (b' '..=b'~').contains(&b) && b != b'\\')
    {
        return raw.iter().map(|&b| b as char).collect();
    }
    let mut shown = String::with_capacity(raw.len());
    for chunk in raw.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => shown.push_str("\\\\"),
                c if c.is_control() => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).bytes() {
                        shown.push_str(&format!("\\x{b:02x}"));
                    }
                }
                c => shown.push(c),
            }
        }
        for b in chunk.invalid() {
            shown.push_str(&format!("\\x{b:02x}"));
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_escaped() {
        assert_eq!(display_comm(b"nginx\0\0\0\0\0\0\0\0\0\0\0"), "nginx");
        assert_eq!(display_comm(b"a\"b\\c\nd"), "a\"b\\\\c\\x0ad");
        assert_eq!(display_comm(b"\xff\xfeok"), "\\xff\\xfeok");
        assert_eq!(display_comm("zeitmesser-ü".as_bytes()), "zeitmesser-ü");
        assert_eq!(display_comm(b""), "");
        // Longer input is cut at TASK_COMM_LEN.
        assert_eq!(display_comm(&[b'x'; 20]), "x".repeat(16));
    }

    #[test]
    fn printable_ascii_is_shown_as_it_is_and_the_edges_are_escaped() {
        assert_eq!(display_comm(b" kworker/0:1~{}"), " kworker/0:1~{}");
        // DEL is a control character, backslash is doubled: not the fast path.
        assert_eq!(display_comm(b"a\x7fb"), "a\\x7fb");
        assert_eq!(display_comm(b"a\\b"), "a\\\\b");
        assert_eq!(display_comm(b"\x1fa"), "\\x1fa");
    }
}
