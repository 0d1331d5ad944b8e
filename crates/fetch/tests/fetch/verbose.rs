//! The protocol trace never shows the password, whatever the login method.

use std::sync::{Arc, Mutex};

use postoffice_fetch::{AuthMethod, Policy, RunOptions};

use crate::common::*;

fn b64(data: &[u8]) -> String {
    pop3_proto::sasl::encode(data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_masks_passwords() {
    let srv = TestServer::start().await;
    srv.deliver(&message(1));
    let secrets = [
        PW.to_string(),
        b64(PW.as_bytes()),
        b64(format!("\0{USER}\0{PW}").as_bytes()),
    ];
    for (method, marker) in [
        (AuthMethod::User, "PASS ****"),
        (AuthMethod::Plain, "AUTH PLAIN ****"),
        (AuthMethod::Login, "AUTH LOGIN"),
    ] {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let l2 = lines.clone();
        let opts = RunOptions {
            trace: Some(Arc::new(move |l: &str| {
                l2.lock().unwrap().push(l.to_string())
            })),
            dry_run: true,
            ..RunOptions::default()
        };
        let mut acct = srv.account(&format!("v{method:?}"), Policy::Keep);
        acct.auth = method;
        let r = fetch(&acct, &opts).await;
        assert!(r.is_ok(), "{method:?}: {:?}", r.error);
        let lines = lines.lock().unwrap();
        let all = lines.join("\n");
        assert!(all.contains(marker), "{method:?}: no {marker:?} in\n{all}");
        assert!(all.contains("S: +OK"), "server lines are traced too");
        for s in &secrets {
            assert!(
                !all.contains(s.as_str()),
                "{method:?}: secret {s:?} in trace:\n{all}"
            );
        }
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with(&format!("v{method:?}: ")))
        );
    }
}
