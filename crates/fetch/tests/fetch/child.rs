//! `postoffice fetch` in a child process, for what an in-process run cannot
//! show: its own memory (the test process also runs servers and other
//! tests) and a SIGKILL at a chosen moment.
//!
//! The child is this test binary run again with only [`fetch_child`]
//! selected and the accounts file in `PO_FETCH_CHILD_CONFIG`; it calls
//! `postoffice_fetch::run` (what `postoffice fetch --config-file` calls),
//! reports its peak memory (VmHWM) before and after on standard error, and
//! exits with run's exit status.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use postoffice_fetch::{EXIT_CONFIG, EXIT_FAILED, EXIT_OK, EXIT_TEMPFAIL, FetchArgs};

const CONFIG_ENV: &str = "PO_FETCH_CHILD_CONFIG";
const REPORT: &str = "po-fetch-child VmHWM kB:";

/// `VmHWM` or `VmRSS` (kB) of process `pid`, from /proc.
pub fn proc_kb(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The child's body; a no-op (passing) test in a normal run.
#[test]
fn fetch_child() {
    let Some(config) = std::env::var_os(CONFIG_ENV) else {
        return;
    };
    let me = std::process::id();
    let before = proc_kb(me, "VmHWM").unwrap_or(0);
    let code = postoffice_fetch::run(FetchArgs {
        config_file: Some(PathBuf::from(config)),
        ..FetchArgs::default()
    })
    .expect("run");
    let after = proc_kb(me, "VmHWM").unwrap_or(0);
    eprintln!("{REPORT} {before} {after}");
    let status = [EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_TEMPFAIL]
        .into_iter()
        .find(|c| ExitCode::from(*c) == code)
        .unwrap_or(99);
    std::process::exit(status.into());
}

/// A running `postoffice fetch` child.
pub struct FetchChild {
    child: Child,
    stderr: PathBuf,
}

/// How a child ended.
#[derive(Debug)]
pub struct Ended {
    pub status: ExitStatus,
    pub stderr: String,
    /// Growth of the peak resident memory during `run`, in kB, as the child
    /// measured it itself (None if it did not get to report).
    pub hwm_growth_kb: Option<u64>,
}

impl FetchChild {
    /// Start `postoffice fetch --config-file config`; its output goes to
    /// files in `dir`.
    pub fn spawn(config: &Path, dir: &Path) -> FetchChild {
        let stderr = dir.join("child.stderr");
        let exe = std::env::current_exe().expect("current_exe");
        let child = Command::new(exe)
            .args([
                "child::fetch_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CONFIG_ENV, config)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("child.stdout")).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawn the fetch child");
        FetchChild { child, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) -> ExitStatus {
        let _ = self.child.kill();
        self.child.wait().expect("wait")
    }

    /// Wait for the child to end by itself, sampling its resident memory
    /// meanwhile: past `max_rss_kb`, or after `limit`, it is killed and
    /// the test fails (a client without limits would otherwise take the
    /// machine's memory, or never end).
    pub async fn wait(&mut self, limit: Duration, max_rss_kb: u64) -> Ended {
        let start = Instant::now();
        let pid = self.pid();
        let mut peak_rss = 0;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if let Some(rss) = proc_kb(pid, "VmRSS") {
                peak_rss = peak_rss.max(rss);
                if rss > max_rss_kb {
                    self.kill();
                    panic!(
                        "the fetch child's memory grew to {rss} kB (over {max_rss_kb} kB); killed it\n{}",
                        self.stderr_text()
                    );
                }
            }
            if start.elapsed() > limit {
                self.kill();
                panic!(
                    "the fetch child still ran after {limit:?}; killed it\n{}",
                    self.stderr_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let stderr = self.stderr_text();
        let hwm_growth_kb = stderr.lines().find_map(|l| {
            let mut w = l.strip_prefix(REPORT)?.split_whitespace();
            let before: u64 = w.next()?.parse().ok()?;
            let after: u64 = w.next()?.parse().ok()?;
            Some(after.saturating_sub(before))
        });
        eprintln!(
            "fetch child: {status}, sampled peak RSS {peak_rss} kB, VmHWM growth {hwm_growth_kb:?} kB"
        );
        Ended {
            status,
            stderr,
            hwm_growth_kb,
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for FetchChild {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An accounts file with one plaintext account `name` on 127.0.0.1:`port`,
/// its state file and `destination` (TOML lines of
/// `[account.destination]`) under `dir`.
pub fn write_config(
    dir: &Path,
    name: &str,
    port: u16,
    user: &str,
    password: &str,
    policy: &str,
    destination: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"[[account]]
name = "{name}"
server = "127.0.0.1"
port = {port}
tls = "none"
user = "{user}"
password = "{password}"
policy = "{policy}"
state_file = "{name}.state"
timeout_secs = 20

[account.destination]
{destination}
"#
    );
    std::fs::write(&path, text).unwrap();
    path
}
