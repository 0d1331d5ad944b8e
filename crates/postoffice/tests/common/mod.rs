//! The end-to-end tests run the real `postoffice` binary; the harness
//! (Env, Server, the POP3/SMTP clients, bounded waits) is
//! postoffice-testkit's.
#![allow(dead_code)]

pub use postoffice_testkit::*;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_postoffice");

/// The exact reply to any refused login (wrong password, unknown user,
/// locked out).
pub const AUTH_FAILED: &str = "-ERR [AUTH] Authentication failed.";
