//! Integration tests for postoffice-fetch against the in-process
//! postoffice server (and a few scripted fake servers).

mod child;
mod common;

mod cli;
mod client;
mod destinations;
mod interruption;
mod kill;
mod limits;
mod policies;
mod tls;
mod verbose;
