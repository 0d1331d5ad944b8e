//! `postoffice`: the command-line interface. Every subcommand has `--help`.
#![forbid(unsafe_code)]

mod cli;

/// mimalloc returns freed memory to the system promptly; with glibc's
/// per-thread arenas an idle server kept the peak of its last burst of
/// load (measured in BENCHMARKS.md: 345 MiB idle after load vs 77 MiB).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
