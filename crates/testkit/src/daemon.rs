//! Child processes a test starts: killed and reaped when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait::poll_until;

/// A child process (a daemon the test started), killed and reaped when
/// dropped. Its stdout and stderr go to one output file, shown when it
/// misbehaves.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    output: PathBuf,
}

impl Daemon {
    /// Starts `command` with stdin from /dev/null and stdout and stderr
    /// into the (new) file `output`. Panics when it cannot be started.
    #[track_caller]
    pub fn spawn(name: &str, mut command: Command, output: &Path) -> Daemon {
        let out =
            File::create(output).unwrap_or_else(|e| panic!("create {}: {e}", output.display()));
        let err = out.try_clone().expect("clone output file");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name} ({command:?}): {e}"));
        Daemon {
            name: name.to_string(),
            child,
            output: output.to_path_buf(),
        }
    }

    /// The name it was started under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited already.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// What it wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        read_log(&self.output)
    }

    /// Kills (SIGKILL) and reaps it; nothing happens when it is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Polls `ready` until it returns `true` (then `true`); `false` when
    /// the process exits or `limit` passes first.
    pub fn wait_until(&mut self, limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
        let mut up = false;
        poll_until(limit, || {
            if self.exited() {
                return true;
            }
            up = ready();
            up
        });
        up
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The text of a log file, or a note saying why there is none.
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()))
}

/// Peak resident set size of a process in KiB (`VmHWM` in
/// /proc/PID/status).
#[track_caller]
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc status")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_exit_and_kill_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2"]);
        let mut d = Daemon::spawn("sh", cmd, &dir.path().join("sh.out"));
        assert_eq!(d.name(), "sh");
        // It exits: wait_until gives up at once, not at the limit.
        assert!(!d.wait_until(Duration::from_secs(30), || false));
        assert!(d.exited());
        let out = d.output();
        assert!(out.contains("out\n") && out.contains("err\n"), "{out:?}");

        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let mut d = Daemon::spawn("sleep", cmd, &dir.path().join("sleep.out"));
        let pid = d.id();
        assert!(d.wait_until(Duration::from_secs(10), || true));
        assert!(!d.exited());
        assert!(peak_rss_kib(pid) > 0);
        drop(d);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"));
        assert!(status.is_err(), "killed and reaped on drop: {status:?}");
    }
}
