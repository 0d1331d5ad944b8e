//! AUTH (RFC 4954) with the PLAIN (RFC 4616) and LOGIN mechanisms, and
//! the SASL continuation lines that follow a `334`. The credentials are
//! the caller's to verify ([`Action::Authenticate`], answered with
//! [`ServerSession::auth_result`]).

use super::{Action, Pending, ServerSession, State};

impl ServerSession {
    /// AUTH is advertised and accepted on this connection now.
    pub(super) fn auth_offered(&self) -> bool {
        self.cfg.submission
            && self.env.authenticated.is_none()
            && (self.cfg.tls_active || self.cfg.plaintext_auth)
    }

    pub(super) fn auth(&mut self, mechanism: u64, initial: &str, out: &mut Vec<u8>) -> Action {
        if !self.cfg.submission {
            self.error(out, "503 5.5.1 AUTH not available on this port\r\n");
            return Action::NeedInput;
        }
        if self.env.authenticated.is_some() {
            self.error(out, "503 5.5.1 Already authenticated\r\n");
            return Action::NeedInput;
        }
        match self.state {
            State::Connected => {
                self.error(out, "503 5.5.1 Send EHLO first\r\n");
                return Action::NeedInput;
            }
            State::Transaction => {
                self.error(
                    out,
                    "503 5.5.1 AUTH not allowed during a mail transaction\r\n",
                );
                return Action::NeedInput;
            }
            _ => {}
        }
        if !self.cfg.tls_active && !self.cfg.plaintext_auth {
            // RFC 4954 6.
            self.error(
                out,
                "538 5.7.11 Encryption required for requested authentication mechanism\r\n",
            );
            return Action::NeedInput;
        }
        let initial = (!initial.is_empty()).then_some(initial);
        match mechanism {
            smtp_proto::AUTH_PLAIN => match initial {
                Some(data) => self.sasl_plain(data.as_bytes(), out),
                None => {
                    self.state = State::AuthPlain;
                    out.extend_from_slice(b"334 \r\n");
                    Action::NeedInput
                }
            },
            smtp_proto::AUTH_LOGIN => match initial {
                Some(data) => match decode_b64(data.as_bytes()) {
                    Some(u) => {
                        self.state = State::AuthLoginPass(String::from_utf8_lossy(&u).into_owned());
                        out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                        Action::NeedInput
                    }
                    None => {
                        self.error(out, "501 5.5.2 Invalid base64 data\r\n");
                        Action::NeedInput
                    }
                },
                None => {
                    self.state = State::AuthLoginUser;
                    out.extend_from_slice(b"334 VXNlcm5hbWU6\r\n");
                    Action::NeedInput
                }
            },
            _ => {
                self.error(out, "504 5.5.4 Unrecognized authentication type\r\n");
                Action::NeedInput
            }
        }
    }

    pub(super) fn sasl_response(&mut self, line: &[u8], out: &mut Vec<u8>) -> Action {
        let state = std::mem::replace(&mut self.state, State::Ready);
        if line == b"*" {
            self.error(out, "501 5.0.0 Authentication cancelled\r\n");
            return Action::NeedInput;
        }
        match state {
            State::AuthPlain => self.sasl_plain(line, out),
            State::AuthLoginUser => match decode_b64(line) {
                Some(u) => {
                    self.state = State::AuthLoginPass(String::from_utf8_lossy(&u).into_owned());
                    out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                    Action::NeedInput
                }
                None => {
                    self.error(out, "501 5.5.2 Invalid base64 data\r\n");
                    Action::NeedInput
                }
            },
            State::AuthLoginPass(user) => match decode_b64(line) {
                Some(password) => {
                    self.state = State::Pending(Pending::Auth);
                    Action::Authenticate { user, password }
                }
                None => {
                    self.error(out, "501 5.5.2 Invalid base64 data\r\n");
                    Action::NeedInput
                }
            },
            other => {
                self.state = other;
                Action::NeedInput
            }
        }
    }

    fn sasl_plain(&mut self, data: &[u8], out: &mut Vec<u8>) -> Action {
        let Some(raw) = decode_b64(data) else {
            self.state = State::Ready;
            self.error(out, "501 5.5.2 Invalid base64 data\r\n");
            return Action::NeedInput;
        };
        // authzid NUL authcid NUL passwd; acting as someone else is not
        // supported, so a non-empty authzid must equal the authcid.
        let mut parts = raw.splitn(3, |&b| b == 0);
        let (Some(authz), Some(user), Some(password)) = (parts.next(), parts.next(), parts.next())
        else {
            self.state = State::Ready;
            self.error(out, "501 5.5.2 Malformed PLAIN response\r\n");
            return Action::NeedInput;
        };
        if user.is_empty() || (!authz.is_empty() && authz != user) {
            self.state = State::Ready;
            self.error(out, "535 5.7.8 Authentication credentials invalid\r\n");
            return Action::NeedInput;
        }
        self.state = State::Pending(Pending::Auth);
        Action::Authenticate {
            user: String::from_utf8_lossy(user).into_owned(),
            password: password.to_vec(),
        }
    }
}

fn decode_b64(data: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    if data == b"=" {
        return Some(Vec::new());
    }
    base64::engine::general_purpose::STANDARD.decode(data).ok()
}
