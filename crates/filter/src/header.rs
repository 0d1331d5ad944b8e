//! Header field rendering: sanitising untrusted text and folding long lines.

/// Longest sanitised value taken from the outside world (a domain, an
/// address, a signature name, a DNSBL reason), in characters.
pub(crate) const MAX_VALUE: usize = 200;

/// Makes untrusted text safe to put into a header field or an SMTP reply:
/// CR, LF and every other control character become a space, anything outside
/// printable ASCII becomes `?`, runs of spaces collapse to one, and the
/// result is trimmed and cut to `max` characters (ending in `...` when cut).
pub(crate) fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    let mut last_space = true;
    for c in text.chars() {
        let c = match c {
            ' '..='~' => c,
            c if c.is_control() => ' ',
            _ => '?',
        };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        out.push(c);
    }
    let mut out = out.trim_end().to_string();
    if out.len() > max {
        let keep = max.saturating_sub(3);
        out.truncate(keep);
        out.push_str("...");
    }
    out
}

/// Like [`sanitize`], for text that goes inside an RFC 5322 comment or an
/// RFC 8601 `reason` element: parentheses, backslashes and double quotes are
/// dropped as well, so the text cannot close the comment or the quoted
/// string early.
pub(crate) fn sanitize_comment(text: &str) -> String {
    let cleaned: String = text
        .chars()
        .map(|c| {
            if matches!(c, '(' | ')' | '\\' | '"') {
                ' '
            } else {
                c
            }
        })
        .collect();
    sanitize(&cleaned, MAX_VALUE)
}

/// An RFC 8601 `pvalue`/`value`: kept as it is when made only of token
/// characters (plus `@`, which the `pvalue` grammar allows between a
/// local-part and a domain), otherwise written as a quoted-string.
pub(crate) fn property_value(text: &str) -> String {
    let text = sanitize(text, MAX_VALUE);
    if text.is_empty() {
        return "\"\"".into();
    }
    let plain = text
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`{|}~@".contains(&b));
    if plain {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Longest line produced where the words allow it (RFC 5322 2.1.1).
const WIDTH: usize = 78;

/// Appends the space-separated words of `text` to `out`, breaking the line
/// (CRLF + tab) before a word that would pass `width`. `line_len` is the
/// length of the current line so far.
fn push_words(out: &mut String, line_len: &mut usize, text: &str, width: usize, mut first: bool) {
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if first {
            first = false;
        } else if *line_len + 1 + word.len() > width {
            out.push_str("\r\n\t");
            *line_len = 1;
        } else {
            out.push(' ');
            *line_len += 1;
        }
        out.push_str(word);
        *line_len += word.len();
    }
}

/// Renders `Name: value` followed by CRLF, folded (RFC 5322 2.2.3) at spaces
/// so that lines stay within 78 characters where the words allow it.
/// Continuation lines start with a tab. The value is sanitised first, so the
/// result never contains a CR or LF other than the fold points and the final
/// CRLF.
pub(crate) fn render(name: &str, value: &str) -> String {
    let value = sanitize(value, 900);
    let mut out = String::with_capacity(name.len() + value.len() + 8);
    out.push_str(name);
    out.push(':');
    let mut line_len = out.len();
    out.push(' ');
    line_len += 1;
    push_words(&mut out, &mut line_len, &value, WIDTH, true);
    out.push_str("\r\n");
    out
}

/// Renders `Name: head;` followed by one `item;` per continuation line (the
/// last without `;`), each sanitised and folded like [`render`]. This is the
/// usual layout of Authentication-Results.
pub(crate) fn render_list(name: &str, head: &str, items: &[String]) -> String {
    let mut out = String::with_capacity(128);
    out.push_str(name);
    out.push_str(": ");
    let mut line_len = out.len();
    push_words(
        &mut out,
        &mut line_len,
        &sanitize(head, MAX_VALUE),
        WIDTH - 1,
        true,
    );
    for item in items {
        out.push_str(";\r\n\t");
        line_len = 1;
        // One column is kept free for the ';' that may follow.
        push_words(
            &mut out,
            &mut line_len,
            &sanitize(item, 900),
            WIDTH - 1,
            true,
        );
    }
    out.push_str("\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_removes_line_breaks_and_controls() {
        assert_eq!(
            sanitize("evil\r\nBcc: victim@example.org", 100),
            "evil Bcc: victim@example.org"
        );
        assert_eq!(sanitize("a\tb\0c\x7fd", 100), "a b c d");
        assert_eq!(sanitize("  spaced   out  ", 100), "spaced out");
        assert_eq!(sanitize("caf\u{e9}", 100), "caf?");
        assert_eq!(sanitize(&"x".repeat(50), 10), "xxxxxxx...");
        assert!(!sanitize("\r\r\n\n", 10).contains(['\r', '\n']));
    }

    #[test]
    fn comment_text_cannot_escape() {
        assert_eq!(sanitize_comment("a) b=(c\\\"d"), "a b= c d");
    }

    #[test]
    fn property_values_are_quoted_when_needed() {
        assert_eq!(property_value("alice@good.test"), "alice@good.test");
        assert_eq!(property_value("a b@x.test"), "\"a b@x.test\"");
        assert_eq!(property_value("we\"ird\\@x"), "\"we\\\"ird\\\\@x\"");
        assert_eq!(property_value(""), "\"\"");
        assert_eq!(property_value("x;\r\ny=z"), "\"x; y=z\"");
    }

    #[test]
    fn render_folds_long_values_and_ends_in_crlf() {
        let value = (0..30)
            .map(|i| format!("word{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let header = render("X-Test", &value);
        assert!(header.ends_with("\r\n"));
        let lines: Vec<&str> = header.trim_end_matches("\r\n").split("\r\n").collect();
        assert!(lines.len() > 1, "{header:?}");
        assert!(lines[0].starts_with("X-Test: word0 "));
        for (i, line) in lines.iter().enumerate() {
            assert!(line.len() <= 78, "{line:?}");
            assert!(!line.contains(['\r', '\n']));
            if i > 0 {
                assert!(line.starts_with('\t'), "{line:?}");
            }
        }
        // Unfolding gives back the words.
        let unfolded = header.trim_end().replace("\r\n\t", " ");
        assert_eq!(unfolded, format!("X-Test: {value}"));
    }

    #[test]
    fn render_list_puts_one_item_per_line() {
        let header = render_list(
            "Authentication-Results",
            "mx.test",
            &["spf=pass smtp.mailfrom=a@b.test".into(), "dkim=none".into()],
        );
        assert_eq!(
            header,
            "Authentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=a@b.test;\r\n\tdkim=none\r\n"
        );
        let long = format!("dkim=fail {}", "header.x=abcdefghij ".repeat(8));
        let header = render_list("A-R", "evil\r\nX: y", &[long]);
        assert!(
            header.starts_with("A-R: evil X: y;\r\n\tdkim=fail "),
            "{header:?}"
        );
        for line in header.trim_end_matches("\r\n").split("\r\n") {
            assert!(line.len() <= 77, "{line:?}");
        }
    }

    #[test]
    fn render_strips_injected_lines() {
        let header = render("X-Virus-Scan", "skipped (boom\r\nX-Injected: 1)");
        assert_eq!(header, "X-Virus-Scan: skipped (boom X-Injected: 1)\r\n");
        // A single overlong word is kept whole rather than broken.
        let long = "y".repeat(100);
        let header = render("X-Long", &long);
        assert_eq!(header, format!("X-Long: {long}\r\n"));
    }
}
