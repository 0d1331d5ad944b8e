//! Who a message says it is from: every address in its From:, Sender:,
//! Resent-From: and Resent-Sender: fields, found by walking *every* header
//! field — not by asking a parser for "the" From:, which returns only one of
//! several (the hole that let a user send `From: Bob` followed by
//! `From: alice`, signed by us as alice).
//!
//! The header section is read twice, independently: a raw scan counts the
//! fields by name (the way a mail client that shows the first or the last
//! From: would see them), and mail-parser parses each field's value
//! (groups, comments, encoded words and display names are its job, not a
//! pattern's). If the two disagree about how many From:/Sender: fields
//! there are, the message is ambiguous and refused.

use mail_parser::{Address, HeaderName, HeaderValue, MessageParser};

/// The identities a message claims, lowercased.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identities {
    /// The From: addresses (RFC 5322 allows several mailboxes in one field).
    pub from: Vec<String>,
    /// The Sender: address, if any.
    pub sender: Vec<String>,
    /// Resent-From: and Resent-Sender: addresses of every resent block.
    pub resent: Vec<String>,
}

impl Identities {
    /// Every claimed address, From: first.
    pub fn all(&self) -> impl Iterator<Item = &str> {
        self.from
            .iter()
            .chain(&self.sender)
            .chain(&self.resent)
            .map(String::as_str)
    }
}

/// Why a message's author fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorError {
    /// More than one From: field (RFC 5322 3.6 allows exactly one).
    #[error("the message has {0} From: fields; exactly one is allowed")]
    MultipleFrom(usize),
    /// More than one Sender: field.
    #[error("the message has {0} Sender: fields; at most one is allowed")]
    MultipleSender(usize),
    /// A From:/Sender:/Resent-From:/Resent-Sender: field with no address
    /// that parses (an encoded word or a bare name only, say).
    #[error("the {0}: field holds no address")]
    NoAddress(&'static str),
    /// The raw header and the parsed one disagree on how many author
    /// fields there are (a field hidden from the parser).
    #[error("the header section is ambiguous about its {0}: fields")]
    Ambiguous(&'static str),
}

/// The identities in `message`'s header section. A message without any
/// From: yields an empty `from` (the caller adds one).
pub fn identities(message: &[u8]) -> Result<Identities, AuthorError> {
    let raw = raw_counts(message);
    if raw.from > 1 {
        return Err(AuthorError::MultipleFrom(raw.from));
    }
    if raw.sender > 1 {
        return Err(AuthorError::MultipleSender(raw.sender));
    }
    let mut ids = Identities::default();
    let (mut from_fields, mut sender_fields, mut resent_fields) = (0, 0, 0);
    if let Some(parsed) = MessageParser::default().parse_headers(message) {
        for header in parsed.headers() {
            let (field, list): (&'static str, &mut Vec<String>) = match header.name {
                HeaderName::From => {
                    from_fields += 1;
                    ("From", &mut ids.from)
                }
                HeaderName::Sender => {
                    sender_fields += 1;
                    ("Sender", &mut ids.sender)
                }
                HeaderName::ResentFrom => {
                    resent_fields += 1;
                    ("Resent-From", &mut ids.resent)
                }
                HeaderName::ResentSender => {
                    resent_fields += 1;
                    ("Resent-Sender", &mut ids.resent)
                }
                _ => continue,
            };
            let before = list.len();
            if let HeaderValue::Address(address) = &header.value {
                list.extend(addresses(address));
            }
            if list.len() == before {
                return Err(AuthorError::NoAddress(field));
            }
        }
    }
    if from_fields != raw.from {
        return Err(AuthorError::Ambiguous("From"));
    }
    if sender_fields != raw.sender {
        return Err(AuthorError::Ambiguous("Sender"));
    }
    if resent_fields != raw.resent {
        return Err(AuthorError::Ambiguous("Resent-From"));
    }
    Ok(ids)
}

/// The addresses of a parsed field that look like addresses (a local part
/// and a domain), lowercased.
fn addresses(address: &Address<'_>) -> Vec<String> {
    address
        .iter()
        .filter_map(|a| a.address())
        .map(|a| a.trim().to_ascii_lowercase())
        .filter(|a| {
            a.rsplit_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty())
        })
        .collect()
}

#[derive(Debug, Default)]
struct RawCounts {
    from: usize,
    sender: usize,
    resent: usize,
}

/// Count author fields by name in the header section, the way a mail
/// client splitting lines would: a field starts on a line that does not
/// begin with white space; its name is what precedes the colon, without
/// trailing white space, in any case.
fn raw_counts(message: &[u8]) -> RawCounts {
    let mut counts = RawCounts::default();
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // Not a field: the header section is over (the parser agrees:
            // what follows is body).
            break;
        };
        let name = line[..colon].trim_ascii_end();
        if name.eq_ignore_ascii_case(b"from") {
            counts.from += 1;
        } else if name.eq_ignore_ascii_case(b"sender") {
            counts.sender += 1;
        } else if name.eq_ignore_ascii_case(b"resent-from")
            || name.eq_ignore_ascii_case(b"resent-sender")
        {
            counts.resent += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(header: &str) -> Result<Identities, AuthorError> {
        identities(format!("{header}\r\n\r\nbody\r\n").as_bytes())
    }

    #[test]
    fn plain_and_display_name_forms() {
        let i = ids("From: Alice <Alice@Example.TEST>\r\nSubject: x").unwrap();
        assert_eq!(i.from, vec!["alice@example.test"]);
        // A display name that looks like an address is only a name.
        let i = ids("From: \"alice@example.test\" <bob@example.test>").unwrap();
        assert_eq!(i.from, vec!["bob@example.test"]);
        // So is a comment.
        let i = ids("From: bob@example.test (alice@example.test)").unwrap();
        assert_eq!(i.from, vec!["bob@example.test"]);
        // Encoded words in the name decode to a name, not an address.
        let i = ids("From: =?utf-8?q?alice=40example.test?= <bob@example.test>").unwrap();
        assert_eq!(i.from, vec!["bob@example.test"]);
    }

    #[test]
    fn every_author_field_counts() {
        let i = ids(
            "From: a@x.test, b@y.test\r\nSender: c@x.test\r\nResent-From: d@z.test\r\nResent-Sender: e@z.test",
        )
        .unwrap();
        assert_eq!(i.from, vec!["a@x.test", "b@y.test"]);
        assert_eq!(i.sender, vec!["c@x.test"]);
        assert_eq!(i.resent, vec!["d@z.test", "e@z.test"]);
        assert_eq!(i.all().count(), 5);
        // A group's members are addresses too.
        let i = ids("From: friends: a@x.test, b@y.test;").unwrap();
        assert_eq!(i.from, vec!["a@x.test", "b@y.test"]);
    }

    #[test]
    fn two_from_fields_are_refused_in_any_spelling() {
        for h in [
            "From: Bob <bob@example.test>\r\nFrom: alice@example.test",
            "From: alice@example.test\r\nfrom: bob@example.test",
            "From: alice@example.test\r\nFROM : bob@example.test",
            "From: alice@example.test\r\nSubject: x\r\nFrom:\r\n bob@example.test",
        ] {
            assert!(
                matches!(ids(h), Err(AuthorError::MultipleFrom(2))),
                "{h:?} -> {:?}",
                ids(h)
            );
        }
        assert!(matches!(
            ids("From: a@x.test\r\nSender: b@x.test\r\nSender: c@x.test"),
            Err(AuthorError::MultipleSender(2))
        ));
    }

    #[test]
    fn a_field_without_an_address_is_refused() {
        for (h, field) in [
            ("From: =?utf-8?q?Alice?=", "From"),
            ("From: Alice", "From"),
            ("From:", "From"),
            ("From: <>", "From"),
            ("From: friends: ;", "From"),
            ("From: a@x.test\r\nSender: Somebody", "Sender"),
            (
                "From: a@x.test\r\nResent-From: =?utf-8?b?Ym9i?=",
                "Resent-From",
            ),
        ] {
            assert_eq!(ids(h), Err(AuthorError::NoAddress(field)), "{h:?}");
        }
    }

    #[test]
    fn no_from_at_all_is_for_the_caller() {
        assert_eq!(ids("Subject: hi").unwrap(), Identities::default());
    }

    #[test]
    fn body_lines_that_look_like_fields_are_not_fields() {
        let i = identities(b"From: a@x.test\r\n\r\nFrom: b@y.test\r\n").unwrap();
        assert_eq!(i.from, vec!["a@x.test"]);
    }
}
