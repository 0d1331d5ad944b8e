//! SASL mechanisms for POP3 AUTH (RFC 5034): PLAIN (RFC 4616) and LOGIN.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use thiserror::Error;

/// Why a SASL message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SaslError {
    /// Not valid base64.
    #[error("invalid base64")]
    Base64,
    /// Not `authzid NUL authcid NUL password`.
    #[error("malformed PLAIN message")]
    Malformed,
    /// An authorization identity other than the user (not supported).
    #[error("authorization identity differs from the authentication identity")]
    Authzid,
}

/// Decode one base64 client response. `=` is the empty response (RFC 5034 4).
pub fn decode(input: &[u8]) -> Result<Vec<u8>, SaslError> {
    if input == b"=" {
        return Ok(Vec::new());
    }
    STANDARD.decode(input).map_err(|_| SaslError::Base64)
}

/// Encode a server challenge.
pub fn encode(data: &[u8]) -> String {
    STANDARD.encode(data)
}

/// Split a decoded PLAIN message `authzid NUL authcid NUL passwd` into
/// (authcid, password). We do not support acting as another user, so a
/// non-empty authzid must equal the authcid.
pub fn parse_plain(msg: &[u8]) -> Result<(Vec<u8>, Vec<u8>), SaslError> {
    let mut parts = msg.splitn(3, |&b| b == 0);
    let authzid = parts.next().ok_or(SaslError::Malformed)?;
    let authcid = parts.next().ok_or(SaslError::Malformed)?;
    let passwd = parts.next().ok_or(SaslError::Malformed)?;
    if authcid.is_empty() || passwd.contains(&0) {
        return Err(SaslError::Malformed);
    }
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::Authzid);
    }
    Ok((authcid.to_vec(), passwd.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_round_trip() {
        let raw = decode(encode(b"\0alice@x\0pw d").as_bytes()).unwrap();
        assert_eq!(
            parse_plain(&raw).unwrap(),
            (b"alice@x".to_vec(), b"pw d".to_vec())
        );
        assert_eq!(
            parse_plain(b"alice@x\0alice@x\0pw").unwrap().0,
            b"alice@x".to_vec()
        );
    }

    #[test]
    fn plain_rejects_bad_input() {
        assert_eq!(parse_plain(b"no-nuls"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"\0\0pw"), Err(SaslError::Malformed));
        assert_eq!(parse_plain(b"bob\0alice\0pw"), Err(SaslError::Authzid));
        assert_eq!(decode(b"!!!not base64"), Err(SaslError::Base64));
        assert_eq!(decode(b"="), Ok(vec![]));
    }
}
