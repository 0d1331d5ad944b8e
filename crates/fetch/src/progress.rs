//! What the command line shows while fetching: an indicatif progress bar
//! on a terminal, plain log lines on standard error otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::fetch::{Progress, human_bytes};

/// Standard-error output of `postoffice fetch`.
pub(crate) struct Output {
    terminal: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Output {
    pub(crate) fn new() -> Self {
        Output {
            terminal: std::io::stderr().is_terminal(),
            bar: Mutex::new(None),
        }
    }

    fn with_bar<R>(&self, f: impl FnOnce(Option<&ProgressBar>) -> R) -> R {
        let guard = self.bar.lock().unwrap_or_else(|e| e.into_inner());
        f(guard.as_ref())
    }

    /// Print a line on standard error without garbling the bar.
    pub(crate) fn eprint(&self, line: &str) {
        self.with_bar(|bar| match bar {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        });
    }
}

impl Progress for Output {
    fn start(&self, account: &str, messages: u64, bytes: u64) {
        if !self.terminal {
            if messages > 0 {
                eprintln!(
                    "{account}: fetching {messages} message{} ({})",
                    if messages == 1 { "" } else { "s" },
                    human_bytes(bytes)
                );
            }
            return;
        }
        if messages == 0 {
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(bytes), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template(
            "{prefix} {msg} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(account.to_string());
        bar.set_message(format!("0/{messages} messages"));
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn message(&self, _account: &str, index: u64, total: u64, _size: u64) {
        self.with_bar(|bar| {
            if let Some(b) = bar {
                b.set_message(format!("{index}/{total} messages"));
            }
        });
    }

    fn bytes(&self, n: u64) {
        self.with_bar(|bar| {
            if let Some(b) = bar {
                b.inc(n);
            }
        });
    }

    fn delivered(&self, account: &str, number: u32, bytes: u64, ok: bool) {
        if !self.terminal {
            if ok {
                eprintln!(
                    "{account}: message {number} delivered ({})",
                    human_bytes(bytes)
                );
            } else {
                eprintln!("{account}: message {number} not delivered");
            }
        }
    }

    fn finish(&self, _account: &str) {
        if let Some(b) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            b.finish_and_clear();
        }
    }

    fn log(&self, line: &str) {
        self.eprint(line);
    }
}
