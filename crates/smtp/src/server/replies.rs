//! The replies more than one handler sends, built from typed parts. A reply
//! only one handler sends is built where it is sent.

use crate::data::HeaderExcess;
use crate::reply::{Reply, codes, status};

/// `250 2.0.0 OK`.
pub(super) fn ok() -> Reply {
    Reply::new(codes::OK, status::OTHER, "OK")
}

/// `503 5.5.1 <text>`: the command is not allowed now.
pub(super) fn bad_sequence(text: &str) -> Reply {
    Reply::new(codes::BAD_SEQUENCE, status::INVALID_COMMAND, text)
}

/// `503 5.5.1 Send EHLO/HELO first`.
pub(super) fn hello_first() -> Reply {
    bad_sequence("Send EHLO/HELO first")
}

/// `502 5.5.1 <text>`.
pub(super) fn not_implemented(text: &str) -> Reply {
    Reply::new(codes::NOT_IMPLEMENTED, status::INVALID_COMMAND, text)
}

/// `500 5.5.2 Line too long`.
pub(super) fn line_too_long() -> Reply {
    Reply::new(codes::SYNTAX_ERROR, status::SYNTAX_ERROR, "Line too long")
}

/// `501 5.1.7 Bad sender address syntax`.
pub(super) fn bad_sender_syntax() -> Reply {
    Reply::new(
        codes::PARAM_SYNTAX_ERROR,
        status::BAD_SENDER_SYNTAX,
        "Bad sender address syntax",
    )
}

/// `<code> 5.1.3 Bad recipient address syntax` (501 or 553).
pub(super) fn bad_recipient_syntax(code: u16) -> Reply {
    Reply::new(
        code,
        status::BAD_DEST_SYNTAX,
        "Bad recipient address syntax",
    )
}

/// `552 5.3.4`: the message is over the size limit.
pub(super) fn message_too_big() -> Reply {
    Reply::new(
        codes::EXCEEDED_STORAGE,
        status::MESSAGE_TOO_BIG,
        "Message size exceeds fixed maximum message size",
    )
}

/// `552 5.3.4`: the message's header section is over a limit.
pub(super) fn header_too_large(excess: HeaderExcess) -> Reply {
    let text = match excess {
        HeaderExcess::Fields(n) => {
            format!("Message header too large: more than {n} header fields")
        }
        HeaderExcess::Bytes(n) => format!("Message header too large: more than {n} octets"),
    };
    Reply::new(codes::EXCEEDED_STORAGE, status::MESSAGE_TOO_BIG, text)
}

/// `554 5.5.1 No valid recipients`: content without an accepted recipient.
pub(super) fn no_valid_recipients() -> Reply {
    Reply::new(
        codes::TRANSACTION_FAILED,
        status::INVALID_COMMAND,
        "No valid recipients",
    )
}

/// `501 5.5.2 Invalid base64 data` (AUTH).
pub(super) fn invalid_base64() -> Reply {
    Reply::new(
        codes::PARAM_SYNTAX_ERROR,
        status::SYNTAX_ERROR,
        "Invalid base64 data",
    )
}

/// `535 5.7.8 Authentication credentials invalid`.
pub(super) fn auth_invalid() -> Reply {
    Reply::new(
        codes::AUTH_INVALID,
        status::AUTH_CREDENTIALS_INVALID,
        "Authentication credentials invalid",
    )
}
