//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, and
//! the SASL continuation lines that follow a `334`. The credentials are
//! the caller's to verify ([`Action::Authenticate`], answered with
//! [`ServerSession::auth_result`]).

use super::{Action, Pending, ServerSession, State, replies};
use crate::reply::{Reply, codes, status};

/// The LOGIN mechanism's first prompt: base64 of `Username:`.
const USERNAME_PROMPT: &str = "VXNlcm5hbWU6";
/// The LOGIN mechanism's second prompt: base64 of `Password:`.
const PASSWORD_PROMPT: &str = "UGFzc3dvcmQ6";

impl ServerSession {
    /// AUTH is advertised and accepted on this connection now.
    pub(super) fn auth_offered(&self) -> bool {
        self.cfg.submission
            && self.env.authenticated.is_none()
            && (self.cfg.tls_active || self.cfg.plaintext_auth)
    }

    /// AUTH: checks, then the initial response or a `334` challenge.
    pub(super) fn auth(&mut self, mechanism: u64, initial: &str, out: &mut Vec<u8>) -> Action {
        if !self.cfg.submission {
            self.error(
                out,
                replies::bad_sequence("AUTH not available on this port"),
            );
            return Action::NeedInput;
        }
        if self.env.authenticated.is_some() {
            self.error(out, replies::bad_sequence("Already authenticated"));
            return Action::NeedInput;
        }
        match self.state {
            State::Connected => {
                self.error(out, replies::bad_sequence("Send EHLO first"));
                return Action::NeedInput;
            }
            State::Transaction => {
                let reply = replies::bad_sequence("AUTH not allowed during a mail transaction");
                self.error(out, reply);
                return Action::NeedInput;
            }
            _ => {}
        }
        if !self.cfg.tls_active && !self.cfg.plaintext_auth {
            // RFC 4954 6.
            let reply = Reply::new(
                codes::ENCRYPTION_REQUIRED,
                status::ENCRYPTION_REQUIRED,
                "Encryption required for requested authentication mechanism",
            );
            self.error(out, reply);
            return Action::NeedInput;
        }
        let initial = (!initial.is_empty()).then_some(initial);
        match mechanism {
            smtp_proto::AUTH_PLAIN => match initial {
                Some(data) => self.sasl_plain(data.as_bytes(), out),
                None => {
                    self.state = State::AuthPlain;
                    challenge("").write_to(out);
                    Action::NeedInput
                }
            },
            smtp_proto::AUTH_LOGIN => match initial {
                Some(data) => match decode_b64(data.as_bytes()) {
                    Some(u) => {
                        self.state = State::AuthLoginPass(String::from_utf8_lossy(&u).into_owned());
                        challenge(PASSWORD_PROMPT).write_to(out);
                        Action::NeedInput
                    }
                    None => {
                        self.error(out, replies::invalid_base64());
                        Action::NeedInput
                    }
                },
                None => {
                    self.state = State::AuthLoginUser;
                    challenge(USERNAME_PROMPT).write_to(out);
                    Action::NeedInput
                }
            },
            _ => {
                let reply = Reply::new(
                    codes::PARAM_NOT_IMPLEMENTED,
                    status::INVALID_ARGUMENTS,
                    "Unrecognized authentication type",
                );
                self.error(out, reply);
                Action::NeedInput
            }
        }
    }

    /// A line answering our `334` (`*` cancels the exchange).
    pub(super) fn sasl_response(&mut self, line: &[u8], out: &mut Vec<u8>) -> Action {
        let state = std::mem::replace(&mut self.state, State::Ready);
        if line == b"*" {
            let reply = Reply::new(
                codes::PARAM_SYNTAX_ERROR,
                status::OTHER,
                "Authentication cancelled",
            );
            self.error(out, reply);
            return Action::NeedInput;
        }
        match state {
            State::AuthPlain => self.sasl_plain(line, out),
            State::AuthLoginUser => match decode_b64(line) {
                Some(u) => {
                    self.state = State::AuthLoginPass(String::from_utf8_lossy(&u).into_owned());
                    challenge(PASSWORD_PROMPT).write_to(out);
                    Action::NeedInput
                }
                None => {
                    self.error(out, replies::invalid_base64());
                    Action::NeedInput
                }
            },
            State::AuthLoginPass(user) => match decode_b64(line) {
                Some(password) => {
                    self.state = State::Pending(Pending::Auth);
                    Action::Authenticate { user, password }
                }
                None => {
                    self.error(out, replies::invalid_base64());
                    Action::NeedInput
                }
            },
            other => {
                self.state = other;
                Action::NeedInput
            }
        }
    }

    /// The PLAIN response (RFC 4616 2), initial or after the `334`.
    fn sasl_plain(&mut self, data: &[u8], out: &mut Vec<u8>) -> Action {
        let Some(raw) = decode_b64(data) else {
            self.state = State::Ready;
            self.error(out, replies::invalid_base64());
            return Action::NeedInput;
        };
        // authzid NUL authcid NUL passwd; acting as someone else is not
        // supported, so a non-empty authzid must equal the authcid.
        let mut parts = raw.splitn(3, |&b| b == 0);
        let (Some(authz), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            self.state = State::Ready;
            let reply = Reply::new(
                codes::PARAM_SYNTAX_ERROR,
                status::SYNTAX_ERROR,
                "Malformed PLAIN response",
            );
            self.error(out, reply);
            return Action::NeedInput;
        };
        if user.is_empty() || (!authz.is_empty() && authz != user) {
            self.state = State::Ready;
            self.error(out, replies::auth_invalid());
            return Action::NeedInput;
        }
        self.state = State::Pending(Pending::Auth);
        Action::Authenticate {
            user: String::from_utf8_lossy(user).into_owned(),
            password: password.to_vec(),
        }
    }
}

/// A `334` server challenge (RFC 4954 4): no enhanced code, base64 text.
fn challenge(text: &str) -> Reply {
    Reply::plain(codes::AUTH_CHALLENGE, text)
}

fn decode_b64(data: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    if data == b"=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(data).ok()
}
