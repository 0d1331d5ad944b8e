//! `postoffice fetch` as a stand-alone program, for trying the library
//! before it is wired into the `postoffice` binary:
//! `cargo run -p postoffice-fetch --example fetch -- --config-file fetch.toml -v`.

use clap::Parser;

#[derive(Parser)]
#[command(name = "fetch")]
struct Cli {
    #[command(flatten)]
    args: postoffice_fetch::FetchArgs,
}

fn main() -> std::process::ExitCode {
    match postoffice_fetch::run(Cli::parse().args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fetch: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
