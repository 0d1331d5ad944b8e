//! STARTTLS (RFC 3207): the `220`, then the caller's handshake
//! ([`Action::StartTls`], answered with [`ServerSession::tls_started`]).

use super::{Action, Pending, ServerSession, State};

impl ServerSession {
    /// STARTTLS: refused inside a transaction, when TLS is active or not
    /// configured.
    pub(super) fn starttls(&mut self, out: &mut Vec<u8>) -> Action {
        if self.cfg.tls_active {
            self.error(out, "503 5.5.1 TLS already active\r\n");
            return Action::NeedInput;
        }
        if !self.cfg.starttls_available {
            self.error(out, "502 5.5.1 STARTTLS not available\r\n");
            return Action::NeedInput;
        }
        if matches!(self.state, State::Transaction) {
            self.error(
                out,
                "503 5.5.1 STARTTLS not allowed during a mail transaction\r\n",
            );
            return Action::NeedInput;
        }
        out.extend_from_slice(b"220 2.0.0 Ready to start TLS\r\n");
        self.state = State::Pending(Pending::Tls);
        Action::StartTls
    }
}
