//! `postoffice`: the command-line interface. Every subcommand has `--help`.
#![forbid(unsafe_code)]

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
