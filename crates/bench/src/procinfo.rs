//! What the kernel says about processes: CPU time (ours and the servers'),
//! and the servers' memory (RSS and PSS). Everything comes from `/proc`, so
//! no `unsafe` (no `getrusage` call) is needed.

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

/// Clock ticks per second for the `/proc/PID/stat` time fields.
fn clk_tck() -> u64 {
    static TCK: OnceLock<u64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            // USER_HZ is 100 on every Linux architecture in practice.
            .unwrap_or(100)
    })
}

/// CPU times of one process, in clock ticks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuTicks {
    /// utime + stime of the process itself (all its threads).
    pub own: u64,
    /// cutime + cstime: children it has waited for.
    pub children: u64,
    /// Parent pid.
    pub ppid: u32,
}

/// Parse `/proc/PID/stat`. The command name (field 2) may contain spaces
/// and parentheses, so fields are counted after its closing parenthesis.
fn stat(pid: &str) -> Option<CpuTicks> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15) cutime(16) cstime(17).
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some(CpuTicks {
        own: num(14)? + num(15)?,
        children: num(16)? + num(17)?,
        ppid: u32::try_from(num(4)?).ok()?,
    })
}

/// This process's CPU time (user + system, all threads) so far.
pub fn self_cpu() -> Duration {
    let ticks = stat("self").map_or(0, |t| t.own);
    ticks_to_duration(ticks)
}

pub fn ticks_to_duration(ticks: u64) -> Duration {
    Duration::from_nanos(ticks.saturating_mul(1_000_000_000) / clk_tck())
}

/// Which server processes to measure.
#[derive(Debug, Clone, Default)]
pub struct ServerSel {
    /// These pids.
    pub pids: Vec<u32>,
    /// Every process whose command line matches (`pgrep -f`).
    pub pgrep: Option<String>,
    /// These pids and all their descendants (Dovecot's master).
    pub tree: Vec<u32>,
}

impl ServerSel {
    pub fn is_empty(&self) -> bool {
        self.pids.is_empty() && self.pgrep.is_none() && self.tree.is_empty()
    }

    /// The pids to measure right now (the set changes as Dovecot forks).
    pub fn resolve(&self) -> Vec<u32> {
        let me = std::process::id();
        let mut set: BTreeSet<u32> = self.pids.iter().copied().collect();
        if let Some(p) = &self.pgrep {
            set.extend(pgrep(p));
        }
        if !self.tree.is_empty() {
            set.extend(descendants(&self.tree));
        }
        set.remove(&me);
        set.into_iter().collect()
    }

    /// Total CPU ticks of the selected servers: their own time plus, for
    /// tree roots, the time of children they have already reaped (Dovecot's
    /// per-session pop3 processes that exited during the run).
    pub fn cpu_ticks(&self) -> u64 {
        let pids = self.resolve();
        let mut total = 0;
        for pid in &pids {
            if let Some(t) = stat(&pid.to_string()) {
                total += t.own;
                if self.tree.contains(pid) {
                    total += t.children;
                }
            }
        }
        total
    }

    /// Total RSS and PSS of the selected processes, in KiB, and how many
    /// processes were counted.
    pub fn memory(&self) -> Memory {
        let mut m = Memory::default();
        for pid in self.resolve() {
            let Some(rss) = status_kib(pid, "VmRSS:") else {
                continue;
            };
            m.rss_kib += rss;
            m.pss_kib += rollup_kib(pid, "Pss:").unwrap_or(rss);
            m.processes += 1;
        }
        m
    }
}

impl ServerSel {
    /// Total RSS of the selected processes (no PSS: cheap enough to
    /// sample every few tens of milliseconds).
    pub fn rss(&self) -> Memory {
        let mut m = Memory::default();
        for pid in self.resolve() {
            if let Some(rss) = status_kib(pid, "VmRSS:") {
                m.rss_kib += rss;
                m.processes += 1;
            }
        }
        m
    }

    /// Reset the peak-RSS mark (`VmHWM`) of the `--server-pids` processes
    /// to their current RSS (`echo 5 > /proc/PID/clear_refs`; needs the
    /// same user or root). True if every one was reset.
    pub fn reset_hwm(&self) -> bool {
        !self.pids.is_empty()
            && self
                .pids
                .iter()
                .all(|pid| fs::write(format!("/proc/{pid}/clear_refs"), b"5").is_ok())
    }

    /// Sum of `VmHWM` (peak RSS since start or since [`Self::reset_hwm`])
    /// of the `--server-pids` processes; `None` without any, or if one
    /// cannot be read. Tree and pgrep selections have no such figure:
    /// processes that exited took their peak with them.
    pub fn hwm_kib(&self) -> Option<u64> {
        if self.pids.is_empty() {
            return None;
        }
        self.pids.iter().map(|&p| status_kib(p, "VmHWM:")).sum()
    }
}

/// Samples the selected servers' total RSS on its own thread (so the
/// generator's event loop never waits for `/proc`) until stopped, and
/// keeps the peak; every [`PSS_EVERY`]th sample also their total PSS
/// (`smaps_rollup` costs ~0.1 ms per process: Postfix runs dozens).
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Peaks>,
}

/// Every how many samples PSS is read too.
pub const PSS_EVERY: usize = 3;

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peaks {
    /// The sample with the highest total RSS.
    pub rss: Memory,
    /// The highest total PSS (of the samples that read it).
    pub pss_kib: u64,
    /// Samples taken.
    pub samples: usize,
}

impl Sampler {
    /// Start sampling every `every`.
    pub fn start(sel: ServerSel, every: Duration) -> std::io::Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rss-sampler".into())
            .spawn(move || {
                let mut peaks = Peaks::default();
                loop {
                    let m = if peaks.samples % PSS_EVERY == 0 {
                        let m = sel.memory();
                        peaks.pss_kib = peaks.pss_kib.max(m.pss_kib);
                        m
                    } else {
                        sel.rss()
                    };
                    peaks.samples += 1;
                    if m.rss_kib >= peaks.rss.rss_kib {
                        peaks.rss = m;
                    }
                    if flag.load(Ordering::Relaxed) {
                        return peaks;
                    }
                    std::thread::sleep(every);
                }
            })?;
        Ok(Sampler { stop, thread })
    }

    /// Stop (after one last sample) and return the peaks.
    pub fn finish(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// Memory of a set of processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub pss_kib: u64,
    pub processes: usize,
}

fn field_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn status_kib(pid: u32, key: &str) -> Option<u64> {
    field_kib(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        key,
    )
}

fn rollup_kib(pid: u32, key: &str) -> Option<u64> {
    field_kib(
        &fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?,
        key,
    )
}

fn pgrep(pattern: &str) -> Vec<u32> {
    Command::new("pgrep")
        .arg("-f")
        .arg(pattern)
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `roots` and every process below them.
fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(pid) = name.parse::<u32>() else {
                continue;
            };
            if let Some(t) = stat(name) {
                parent_of.push((pid, t.ppid));
            }
        }
    }
    let mut set: BTreeSet<u32> = roots
        .iter()
        .copied()
        .filter(|r| parent_of.iter().any(|(p, _)| p == r))
        .collect();
    loop {
        let before = set.len();
        for (pid, ppid) in &parent_of {
            if set.contains(ppid) {
                set.insert(*pid);
            }
        }
        if set.len() == before {
            break;
        }
    }
    set.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_visible() {
        let t = stat("self").expect("/proc/self/stat");
        assert!(t.ppid > 0);
        let sel = ServerSel {
            tree: vec![std::process::id()],
            ..Default::default()
        };
        // resolve() drops our own pid: a generator never measures itself.
        assert!(sel.resolve().is_empty());
        // The peak-RSS mark of a listed pid can be reset and read.
        let me = ServerSel {
            pids: vec![std::process::id()],
            ..Default::default()
        };
        assert!(me.reset_hwm(), "clear_refs of our own process");
        assert!(me.hwm_kib().is_some_and(|k| k > 0));
        assert_eq!(ServerSel::default().hwm_kib(), None);
        assert!(
            field_kib("Name: x\nVmRSS:\t  1234 kB\n", "VmRSS:") == Some(1234),
            "kB field parsing"
        );
    }
}
