//! Parsing one POP3 command line (RFC 1939 section 3, RFC 2449, 2595, 5034, 6856).
//!
//! Keywords are case-insensitive. Arguments are separated by single spaces;
//! we tolerate runs of spaces between numeric arguments. `USER` and `PASS`
//! take the rest of the line as their argument, because RFC 1939 allows a
//! server to treat spaces in a password as part of it.

use thiserror::Error;

/// A parsed POP3 command. Byte-slice arguments borrow from the input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `USER name`.
    User(&'a [u8]),
    /// `PASS password` (everything after the space).
    Pass(&'a [u8]),
    /// `APOP` (not supported; refused).
    Apop,
    /// `AUTH` with no mechanism lists the mechanisms (a widespread
    /// extension of RFC 1734 clients still probe with).
    Auth {
        /// The SASL mechanism; `None` lists them.
        mechanism: Option<&'a [u8]>,
        /// The initial response (RFC 4616), if given.
        initial: Option<&'a [u8]>,
    },
    /// `STAT`.
    Stat,
    /// `LIST [n]`.
    List(Option<u32>),
    /// `RETR n`.
    Retr(u32),
    /// `DELE n`.
    Dele(u32),
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// `QUIT`.
    Quit,
    /// `TOP n lines`.
    Top(u32, u64),
    /// `UIDL [n]`.
    Uidl(Option<u32>),
    /// `CAPA` (RFC 2449).
    Capa,
    /// `STLS` (RFC 2595).
    Stls,
    /// `UTF8` (RFC 6856).
    Utf8,
}

/// Why a line is not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ParseError {
    /// An empty line.
    #[error("empty command")]
    Empty,
    /// A command this server does not know.
    #[error("unknown command")]
    Unknown,
    /// A known command with wrong arguments (the reason).
    #[error("invalid arguments: {0}")]
    BadArgs(&'static str),
}

fn eq_kw(a: &[u8], kw: &str) -> bool {
    a.eq_ignore_ascii_case(kw.as_bytes())
}

/// Parse a strictly decimal message number (1..=u32::MAX).
fn msg_number(arg: &[u8]) -> Result<u32, ParseError> {
    let n = number(arg).ok_or(ParseError::BadArgs("invalid message number"))?;
    if n == 0 || n > u64::from(u32::MAX) {
        return Err(ParseError::BadArgs("invalid message number"));
    }
    Ok(n as u32)
}

fn number(arg: &[u8]) -> Option<u64> {
    if arg.is_empty() || arg.len() > 19 || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    arg.iter().try_fold(0u64, |acc, d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Split off the keyword; returns (keyword, rest-after-one-space).
fn split_keyword(line: &[u8]) -> (&[u8], Option<&[u8]>) {
    match line.iter().position(|&b| b == b' ') {
        Some(p) => (&line[..p], Some(&line[p + 1..])),
        None => (line, None),
    }
}

fn words(rest: Option<&[u8]>) -> Vec<&[u8]> {
    match rest {
        Some(r) => r.split(|&b| b == b' ').filter(|w| !w.is_empty()).collect(),
        None => Vec::new(),
    }
}

/// Parse one command line (without its line end).
pub fn parse(line: &[u8]) -> Result<Command<'_>, ParseError> {
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let (kw, rest) = split_keyword(line);
    if kw.len() < 3 || kw.len() > 4 {
        return Err(ParseError::Unknown);
    }
    let args = || words(rest);
    let none = |c: Command<'static>| -> Result<Command<'static>, ParseError> {
        if args().is_empty() {
            Ok(c)
        } else {
            Err(ParseError::BadArgs("this command takes no arguments"))
        }
    };
    let optional_msg = || -> Result<Option<u32>, ParseError> {
        match args().as_slice() {
            [] => Ok(None),
            [n] => msg_number(n).map(Some),
            _ => Err(ParseError::BadArgs("too many arguments")),
        }
    };
    let one_msg = || -> Result<u32, ParseError> {
        match args().as_slice() {
            [n] => msg_number(n),
            [] => Err(ParseError::BadArgs("message number required")),
            _ => Err(ParseError::BadArgs("too many arguments")),
        }
    };
    if eq_kw(kw, "USER") {
        match rest {
            Some(r) if !r.is_empty() => Ok(Command::User(r)),
            _ => Err(ParseError::BadArgs("USER needs a name")),
        }
    } else if eq_kw(kw, "PASS") {
        // An empty password is still a (wrong) password, not a syntax error:
        // answering differently would be a hint.
        Ok(Command::Pass(rest.unwrap_or(b"")))
    } else if eq_kw(kw, "STAT") {
        none(Command::Stat)
    } else if eq_kw(kw, "LIST") {
        optional_msg().map(Command::List)
    } else if eq_kw(kw, "RETR") {
        one_msg().map(Command::Retr)
    } else if eq_kw(kw, "DELE") {
        one_msg().map(Command::Dele)
    } else if eq_kw(kw, "NOOP") {
        none(Command::Noop)
    } else if eq_kw(kw, "RSET") {
        none(Command::Rset)
    } else if eq_kw(kw, "QUIT") {
        none(Command::Quit)
    } else if eq_kw(kw, "UIDL") {
        optional_msg().map(Command::Uidl)
    } else if eq_kw(kw, "TOP") {
        match args().as_slice() {
            [n, l] => {
                let n = msg_number(n)?;
                let l = number(l).ok_or(ParseError::BadArgs("invalid line count"))?;
                Ok(Command::Top(n, l))
            }
            _ => Err(ParseError::BadArgs(
                "TOP needs a message number and a line count",
            )),
        }
    } else if eq_kw(kw, "CAPA") {
        none(Command::Capa)
    } else if eq_kw(kw, "STLS") {
        none(Command::Stls)
    } else if eq_kw(kw, "UTF8") {
        none(Command::Utf8)
    } else if eq_kw(kw, "APOP") {
        Ok(Command::Apop)
    } else if eq_kw(kw, "AUTH") {
        match args().as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [m] => Ok(Command::Auth {
                mechanism: Some(m),
                initial: None,
            }),
            [m, i] => Ok(Command::Auth {
                mechanism: Some(m),
                initial: Some(i),
            }),
            _ => Err(ParseError::BadArgs("too many arguments")),
        }
    } else {
        Err(ParseError::Unknown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keywords_are_case_insensitive() {
        assert_eq!(parse(b"stat"), Ok(Command::Stat));
        assert_eq!(parse(b"StAt"), Ok(Command::Stat));
        assert_eq!(parse(b"quit"), Ok(Command::Quit));
    }

    #[test]
    fn numeric_arguments() {
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"LIST 7"), Ok(Command::List(Some(7))));
        assert_eq!(parse(b"RETR 4294967295"), Ok(Command::Retr(u32::MAX)));
        assert_eq!(parse(b"TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(parse(b"TOP 2  10"), Ok(Command::Top(2, 10)));
        assert!(matches!(parse(b"RETR 0"), Err(ParseError::BadArgs(_))));
        assert!(matches!(parse(b"RETR -1"), Err(ParseError::BadArgs(_))));
        assert!(matches!(
            parse(b"RETR 4294967296"),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(parse(b"RETR 1x"), Err(ParseError::BadArgs(_))));
        assert!(matches!(parse(b"RETR"), Err(ParseError::BadArgs(_))));
        assert!(matches!(parse(b"RETR 1 2"), Err(ParseError::BadArgs(_))));
        assert!(matches!(
            parse(b"DELE 99999999999999999999999"),
            Err(ParseError::BadArgs(_))
        ));
        assert!(matches!(parse(b"TOP 1"), Err(ParseError::BadArgs(_))));
        assert!(matches!(parse(b"STAT 1"), Err(ParseError::BadArgs(_))));
    }

    #[test]
    fn user_and_pass_take_the_rest_of_the_line() {
        assert_eq!(parse(b"USER a@b"), Ok(Command::User(b"a@b")));
        assert_eq!(
            parse(b"PASS my secret pw"),
            Ok(Command::Pass(b"my secret pw"))
        );
        assert_eq!(parse(b"PASS"), Ok(Command::Pass(b"")));
        assert!(parse(b"USER").is_err());
        assert!(parse(b"USER ").is_err());
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse(b"AUTH"),
            Ok(Command::Auth {
                mechanism: None,
                initial: None
            })
        );
        assert_eq!(
            parse(b"AUTH PLAIN AGFAYg=="),
            Ok(Command::Auth {
                mechanism: Some(b"PLAIN"),
                initial: Some(b"AGFAYg==")
            })
        );
    }

    #[test]
    fn junk_is_rejected_not_crashing() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"\0\0\0\0"), Err(ParseError::Unknown));
        assert_eq!(parse(b"\xff\xfe\xfd"), Err(ParseError::Unknown));
        assert_eq!(parse(b"XYZZY"), Err(ParseError::Unknown));
        assert_eq!(parse(b"ST"), Err(ParseError::Unknown));
        assert_eq!(parse(b" STAT"), Err(ParseError::Unknown));
    }
}
