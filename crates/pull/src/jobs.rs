//! Server-run fetch jobs (see the crate documentation).
