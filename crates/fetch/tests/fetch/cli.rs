//! `run(FetchArgs)` end to end: accounts file, exit statuses.

use std::process::ExitCode;

use postoffice_fetch::{FetchArgs, run};

use crate::common::*;

fn run_in_thread(args: FetchArgs) -> ExitCode {
    // run() builds its own runtime, so it must not run on a runtime thread.
    std::thread::spawn(move || run(args).unwrap())
        .join()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_fetches_configured_accounts_and_reports_exit_statuses() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    srv.deliver(&message(2));
    let dead_port = postoffice_testkit::free_port();
    let cfg = srv.path().join("fetch.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[[account]]
name = "good"
server = "localhost"
port = {tls_port}
tls = "implicit"
ca_file = "data/tls/cert.pem"
user = "{USER}"
password_command = "echo '{PW}'"
state_file = "good.state"
[account.destination]
mbox = "out/good.mbox"

[[account]]
name = "down"
server = "127.0.0.1"
port = {dead_port}
tls = "none"
user = "{USER}"
password = "x"
state_file = "down.state"
[account.destination]
maildir = "out/down"

[[account]]
name = "badpw"
server = "127.0.0.1"
port = {plain_port}
tls = "none"
user = "{USER}"
password = "wrong password"
state_file = "badpw.state"
[account.destination]
maildir = "out/badpw"
"#,
            tls_port = srv.tls.port(),
            plain_port = srv.plain.port(),
        ),
    )
    .unwrap();
    let args = |accounts: &[&str]| FetchArgs {
        config_file: Some(cfg.clone()),
        accounts: accounts.iter().map(|s| s.to_string()).collect(),
        ..FetchArgs::default()
    };
    assert_eq!(run_in_thread(args(&["good"])), ExitCode::from(0));
    let mbox = std::fs::read_to_string(srv.path().join("out/good.mbox")).unwrap();
    assert_eq!(mbox.lines().filter(|l| l.starts_with("From ")).count(), 2);
    assert_eq!(srv.count(), 0);

    assert_eq!(run_in_thread(args(&["down"])), ExitCode::from(75));
    assert_eq!(run_in_thread(args(&["down", "badpw"])), ExitCode::from(1));
    assert_eq!(run_in_thread(args(&["nosuch"])), ExitCode::from(2));
}
