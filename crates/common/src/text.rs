//! Untrusted text made safe to show: in a log line, a terminal or a reply.

/// Keep printable ASCII and spaces only (no control characters, no escape
/// sequences, no line breaks), at most `max` characters; a cut is marked
/// with `...`.
pub fn printable(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for (n, c) in s
        .chars()
        .filter(|c| *c == ' ' || c.is_ascii_graphic())
        .enumerate()
    {
        if n == max {
            out.push_str("...");
            break;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_escapes_are_dropped() {
        assert_eq!(printable("ok \x1b[2Jbye\r\n", 100), "ok [2Jbye");
        assert_eq!(printable("abcdef", 3), "abc...");
        assert_eq!(printable("abc", 3), "abc");
        assert_eq!(printable("caf\u{e9}", 10), "caf");
    }
}
