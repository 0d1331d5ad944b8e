//! `with-postgres COMMAND [ARG]...`: runs COMMAND with a private PostgreSQL
//! server (testkit's [`Postgres`]) and `POSTOFFICE_TEST_PG_URL` naming it,
//! then stops the server; exits with COMMAND's status. `scripts/test.sh`
//! runs end-to-end tests this way so that every test environment gets a
//! database of its own and the tests run against the postgres backend.

use std::process::{Command, ExitCode};

use postoffice_testkit::Postgres;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(program) = args.next() else {
        eprintln!("usage: with-postgres COMMAND [ARG]...");
        return ExitCode::from(64);
    };
    let pg = Postgres::start();
    eprintln!("with-postgres: PostgreSQL at {}", pg.url);
    let status = Command::new(&program)
        .args(args)
        .env("POSTOFFICE_TEST_PG_URL", &pg.url)
        .status();
    drop(pg);
    match status {
        Ok(s) => ExitCode::from(s.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)),
        Err(e) => {
            eprintln!(
                "with-postgres: cannot run {}: {e}",
                program.to_string_lossy()
            );
            ExitCode::from(127)
        }
    }
}
