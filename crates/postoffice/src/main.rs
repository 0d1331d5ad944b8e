//! `postoffice`: the command-line interface. Every subcommand has `--help`.
#![forbid(unsafe_code)]

mod cli;
mod fetch_jobs;
mod import;

/// jemalloc, built with `background_thread:true,dirty_decay_ms:1000,
/// muzzy_decay_ms:0,narenas:2` (see `.cargo/config.toml`): memory freed
/// after a burst of load (10,000 sessions, a 100,000-message listing,
/// argon2id's 19 MiB per password check) goes back to the system within
/// about a second, where glibc's malloc kept the server at its peak.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
