//! One string buffer per listing, and the UIDs that point into it.
//!
//! A snapshot of a 100,000-message maildrop needs 100,000 file names and
//! 100,000 UIDs. As two `String`s per message that was 200,000 allocations
//! to make and, worse, 200,000 `free`s when the session ended (about a sixth
//! of the time of login + UIDL on such a maildrop). Here every name goes
//! into one [`Arena`]; a message's UID is normally a prefix of its file name
//! and then costs nothing but a [`Span`]. The finished arena is shared
//! ([`Frozen`]) by the snapshot's locations and its [`Uid`]s.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::{Deref, Range};
use std::sync::Arc;

/// Where a string lies inside an [`Arena`] (32-bit offsets keep the
/// per-message records small; an arena is limited to 4 GiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// The span of `len` bytes at `start`, if both ends fit in 32 bits.
    fn at(start: usize, len: usize) -> Option<Span> {
        let start = u32::try_from(start).ok()?;
        let len = u32::try_from(len).ok()?;
        start.checked_add(len)?;
        Some(Span { start, len })
    }

    pub(crate) fn len(self) -> usize {
        self.len as usize
    }

    /// The first `len` bytes of this span (all of it if `len` is larger).
    /// The caller ensures the cut falls on a character boundary; otherwise
    /// lookups yield "" instead of panicking.
    pub(crate) fn prefix(self, len: usize) -> Span {
        Span {
            start: self.start,
            len: self.len.min(u32::try_from(len).unwrap_or(u32::MAX)),
        }
    }

    /// The `len` bytes at `offset` within this span, if they lie inside it.
    pub(crate) fn sub(self, offset: usize, len: usize) -> Option<Span> {
        let end = offset.checked_add(len)?;
        if end > self.len as usize {
            return None;
        }
        Span::at(self.start as usize + offset, len)
    }

    fn range(self) -> Range<usize> {
        let start = self.start as usize;
        start..start + self.len as usize
    }
}

/// A growing buffer of strings, each identified by its [`Span`].
#[derive(Debug, Default)]
pub(crate) struct Arena {
    text: String,
}

impl Arena {
    pub(crate) fn with_capacity(bytes: usize) -> Self {
        Arena {
            text: String::with_capacity(bytes),
        }
    }

    /// An arena that starts with `text` (a listing cache read whole: names
    /// are then spans of it, found with [`Arena::span_of`]).
    pub(crate) fn from_string(text: String) -> Self {
        Arena { text }
    }

    /// The span of `range` of the text, if it fits 32-bit offsets and lies
    /// on character boundaries.
    pub(crate) fn span_of(&self, range: Range<usize>) -> Option<Span> {
        self.text.get(range.clone())?;
        Span::at(range.start, range.end - range.start)
    }

    /// The whole text.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Appends `s`; `None` once the arena would outgrow 32-bit offsets.
    pub(crate) fn push(&mut self, s: &str) -> Option<Span> {
        let span = Span::at(self.text.len(), s.len())?;
        self.text.push_str(s);
        Some(span)
    }

    /// The string at `span` ("" for a span that is not from this arena).
    pub(crate) fn get(&self, span: Span) -> &str {
        self.text.get(span.range()).unwrap_or_default()
    }

    /// Ends the building phase: the buffer becomes shareable by [`Uid`]s.
    pub(crate) fn freeze(mut self) -> Frozen {
        // Growth by doubling can leave up to half the buffer unused.
        self.text.shrink_to_fit();
        Frozen(Arc::new(self.text))
    }
}

/// A finished [`Arena`], shared by a snapshot and every [`Uid`] taken from
/// it. `Arc<String>` rather than `Arc<str>`: freezing then moves the buffer
/// instead of copying it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Frozen(Arc<String>);

impl Frozen {
    pub(crate) fn get(&self, span: Span) -> &str {
        self.0.get(span.range()).unwrap_or_default()
    }

    /// The UID stored at `span`: no allocation, one reference count.
    pub(crate) fn uid(&self, span: Span) -> Uid {
        Uid {
            text: Arc::clone(&self.0),
            span,
        }
    }
}

/// A POP3 unique ID (`UIDL`): 1 to 70 printable ASCII characters.
///
/// Behaves like a `&str` (it dereferences to one, compares with strings and
/// displays as one). The text usually lives in a buffer shared by a whole
/// snapshot, so a UID costs no allocation of its own and cloning it is a
/// reference-count increment.
#[derive(Clone)]
pub struct Uid {
    text: Arc<String>,
    span: Span,
}

impl Uid {
    /// The UID as a string slice.
    pub fn as_str(&self) -> &str {
        self.text.get(self.span.range()).unwrap_or_default()
    }
}

impl Deref for Uid {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Uid {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl Borrow<str> for Uid {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl From<&str> for Uid {
    fn from(s: &str) -> Self {
        Uid::from(s.to_owned())
    }
}

impl From<String> for Uid {
    fn from(s: String) -> Self {
        let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
        Uid {
            text: Arc::new(s),
            span: Span { start: 0, len },
        }
    }
}

impl From<Uid> for String {
    fn from(uid: Uid) -> Self {
        uid.as_str().to_owned()
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq for Uid {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Uid {}

impl Hash for Uid {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Like `str`, so that `Borrow<str>` lookups work.
        self.as_str().hash(state);
    }
}

impl PartialOrd for Uid {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Uid {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialEq<str> for Uid {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Uid {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<String> for Uid {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other.as_str()
    }
}

impl PartialEq<Uid> for str {
    fn eq(&self, other: &Uid) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<Uid> for &str {
    fn eq(&self, other: &Uid) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<Uid> for String {
    fn eq(&self, other: &Uid) -> bool {
        self.as_str() == other.as_str()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn arena_spans_and_prefixes() {
        let mut arena = Arena::default();
        let a = arena.push("1700000000.M1P1.host,S=3,W=3:2,S").unwrap();
        let empty = arena.push("").unwrap();
        let b = arena.push("caf\u{e9}.x").unwrap();
        assert_eq!(arena.get(a), "1700000000.M1P1.host,S=3,W=3:2,S");
        assert_eq!(arena.get(empty), "");
        assert_eq!(arena.get(b), "caf\u{e9}.x");
        assert_eq!(a.range(), 0..32);
        assert_eq!(arena.get(a.prefix(20)), "1700000000.M1P1.host");
        assert_eq!(arena.get(a.prefix(1000)), arena.get(a), "prefix is capped");
        // A cut inside a character yields "" rather than a panic.
        assert_eq!(arena.get(b.prefix(4)), "");

        let frozen = arena.freeze();
        assert_eq!(frozen.get(a), "1700000000.M1P1.host,S=3,W=3:2,S");
        assert_eq!(frozen.get(b), "caf\u{e9}.x");
        let uid = frozen.uid(a.prefix(20));
        assert_eq!(uid, "1700000000.M1P1.host");
        assert_eq!(uid.len(), 20);
        // A span from elsewhere never panics.
        let foreign = Span {
            start: 1000,
            len: 5,
        };
        assert_eq!(frozen.get(foreign), "");
        assert_eq!(frozen.uid(foreign).as_str(), "");
    }

    #[test]
    fn spans_refuse_offsets_beyond_32_bits() {
        let max = u32::MAX as usize;
        assert_eq!(Span::at(max - 3, 3).map(Span::range), Some(max - 3..max));
        assert_eq!(Span::at(max - 3, 4), None);
        assert_eq!(Span::at(max + 1, 0), None);
        assert_eq!(Span::at(0, max + 1), None);
        // Such a span never panics a lookup either.
        let arena = Arena::default();
        assert_eq!(arena.get(Span::at(max - 3, 3).unwrap()), "");
    }

    #[test]
    fn uids_share_the_frozen_buffer_and_compare_as_strings() {
        let mut arena = Arena::default();
        let spans: Vec<Span> = ["a.1,S=1", "b.2:2,", "c.3"]
            .iter()
            .map(|s| arena.push(s).unwrap())
            .collect();
        let frozen = arena.freeze();
        let uids: Vec<Uid> = spans
            .iter()
            .zip([3, 3, 3])
            .map(|(s, n)| frozen.uid(s.prefix(n)))
            .collect();
        assert_eq!(uids[0], "a.1");
        assert_eq!(uids[1], "b.2");
        assert_eq!(uids[2], "c.3");
        assert_eq!(Arc::strong_count(&frozen.0), 4);
        let copy = uids[1].clone();
        assert_eq!(Arc::strong_count(&frozen.0), 5);
        drop(uids);
        drop(frozen);
        // The buffer lives as long as any UID taken from it.
        assert_eq!(copy.as_str(), "b.2");
        assert_eq!(copy.to_string(), "b.2");
        assert_eq!(format!("{copy:?}"), "\"b.2\"");

        // Equality, hashing and ordering follow the text, not the buffer.
        let standalone = Uid::from("b.2");
        assert_eq!(copy, standalone);
        assert_eq!(standalone, String::from("b.2"));
        assert_eq!(String::from("b.2"), standalone);
        assert_eq!("b.2", standalone);
        let mut sorted = vec![Uid::from("b"), Uid::from("a")];
        sorted.sort();
        assert_eq!(sorted, ["a", "b"]);
        let set: HashSet<Uid> = [copy, standalone].into_iter().collect();
        assert_eq!(set.len(), 1);
        assert!(set.contains("b.2"), "Borrow<str> lookups hash like str");
        assert_eq!(String::from(Uid::from(String::from("x.y"))), "x.y");
    }
}
