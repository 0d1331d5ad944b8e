//! Client side: parsing the server's status lines (RFC 1939, RFC 2449
//! extended response codes, RFC 3206).

/// An extended response code from `-ERR [CODE] text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespCode {
    /// `[IN-USE]`: another session holds the maildrop.
    InUse,
    /// `[LOGIN-DELAY]`: logged in too recently.
    LoginDelay,
    /// `[AUTH]`: the credentials were refused.
    Auth,
    /// `[SYS/TEMP]`: a temporary server problem.
    SysTemp,
    /// `[SYS/PERM]`: a permanent server problem.
    SysPerm,
    /// `[UTF8]`: the text needs UTF8 mode.
    Utf8,
    /// A response code this client does not know.
    Other(String),
}

impl RespCode {
    fn parse(code: &str) -> RespCode {
        match code.to_ascii_uppercase().as_str() {
            "IN-USE" => RespCode::InUse,
            "LOGIN-DELAY" => RespCode::LoginDelay,
            "AUTH" => RespCode::Auth,
            "SYS/TEMP" => RespCode::SysTemp,
            "SYS/PERM" => RespCode::SysPerm,
            "UTF8" => RespCode::Utf8,
            _ => RespCode::Other(code.to_string()),
        }
    }
}

/// One status line from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// `+OK` and the text after it.
    Ok(String),
    /// `-ERR`, with its response code if any.
    Err {
        /// The RFC 2449 response code, if the server sent one.
        code: Option<RespCode>,
        /// The text after the code.
        text: String,
    },
    /// A SASL continuation (`+ base64`).
    Continue(String),
}

/// Why a status line could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed server response: {0:?}")]
pub struct BadResponse(pub String);

/// Parse a status line (without CRLF).
pub fn parse_status(line: &[u8]) -> Result<Status, BadResponse> {
    let text = String::from_utf8_lossy(line);
    // A status word must be followed by a space or the end of the line.
    let after = |word: &str| -> Option<&str> {
        let rest = text.strip_prefix(word)?;
        (rest.is_empty() || rest.starts_with(' ')).then(|| rest.trim_start())
    };
    if let Some(rest) = after("+OK") {
        return Ok(Status::Ok(rest.to_string()));
    }
    if let Some(rest) = after("-ERR") {
        if let Some((code, text)) = rest
            .strip_prefix('[')
            .and_then(|inner| inner.split_once(']'))
        {
            return Ok(Status::Err {
                code: Some(RespCode::parse(code)),
                text: text.trim_start().to_string(),
            });
        }
        return Ok(Status::Err {
            code: None,
            text: rest.to_string(),
        });
    }
    if let Some(rest) = after("+") {
        return Ok(Status::Continue(rest.to_string()));
    }
    Err(BadResponse(text.chars().take(80).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status(b"+OK"), Ok(Status::Ok(String::new())));
        assert_eq!(parse_status(b"+OK 2 320"), Ok(Status::Ok("2 320".into())));
        assert_eq!(
            parse_status(b"-ERR [IN-USE] locked"),
            Ok(Status::Err {
                code: Some(RespCode::InUse),
                text: "locked".into()
            })
        );
        assert_eq!(
            parse_status(b"-ERR no such message"),
            Ok(Status::Err {
                code: None,
                text: "no such message".into()
            })
        );
        assert_eq!(parse_status(b"+ "), Ok(Status::Continue(String::new())));
        assert!(parse_status(b"+OKAY").is_err());
        assert!(parse_status(b"\0\xff").is_err());
        assert!(parse_status(b"").is_err());
    }
}
