//! STARTTLS (RFC 3207): the `220`, then the caller's handshake
//! ([`Action::StartTls`], answered with [`ServerSession::tls_started`]).

use super::{Action, Pending, ServerSession, State, replies};
use crate::reply::{Reply, codes, status};

impl ServerSession {
    /// STARTTLS: refused inside a transaction, when TLS is active or not
    /// configured.
    pub(super) fn starttls(&mut self, out: &mut Vec<u8>) -> Action {
        if self.cfg.tls_active {
            self.error(out, replies::bad_sequence("TLS already active"));
            return Action::NeedInput;
        }
        if !self.cfg.starttls_available {
            self.error(out, replies::not_implemented("STARTTLS not available"));
            return Action::NeedInput;
        }
        if matches!(self.state, State::Transaction) {
            let reply = replies::bad_sequence("STARTTLS not allowed during a mail transaction");
            self.error(out, reply);
            return Action::NeedInput;
        }
        Reply::new(codes::READY, status::OTHER, "Ready to start TLS").write_to(out);
        self.state = State::Pending(Pending::Tls);
        Action::StartTls
    }
}
