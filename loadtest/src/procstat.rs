//! CPU time and memory of a process, read from Linux `/proc/<pid>/{stat,status}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

/// Reading `/proc` failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (process gone, not Linux, ...).
    #[error("cannot read {path}: {source}")]
    Read {
        /// File.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// The file did not have the expected shape.
    #[error("cannot parse {path}: {what}")]
    Parse {
        /// File.
        path: String,
        /// What was missing.
        what: &'static str,
    },
}

fn read(path: String) -> Result<(String, String), ProcError> {
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path, text)),
        Err(source) => Err(ProcError::Read { path, source }),
    }
}

/// `utime + stime` in clock ticks from the text of `/proc/<pid>/stat`
/// (fields 14 and 15; the command name in parentheses may hold spaces).
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ')' the fields start at number 3 (state).
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Memory figures of `/proc/<pid>/status`, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
}

/// `VmRSS` and `VmHWM` from the text of `/proc/<pid>/status`.
pub fn parse_status_memory(status: &str) -> Option<Memory> {
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        line[name.len()..].split_whitespace().next()?.parse().ok()
    };
    Some(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time (user + system) a process has used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64, ProcError> {
    let (path, text) = read(format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&text).ok_or(ProcError::Parse {
        path,
        what: "utime/stime",
    })
}

/// Current and peak RSS of a process.
pub fn memory(pid: u32) -> Result<Memory, ProcError> {
    let (path, text) = read(format!("/proc/{pid}/status"))?;
    parse_status_memory(&text).ok_or(ProcError::Parse {
        path,
        what: "VmRSS/VmHWM",
    })
}

/// Busy and total CPU time of the whole machine so far, in clock ticks (all CPUs).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineTicks {
    /// Everything but idle and I/O wait.
    pub busy: u64,
    /// Everything.
    pub total: u64,
}

impl MachineTicks {
    /// Share of the time between `earlier` and `self` the CPUs were busy, in percent
    /// (`None` when no time passed).
    pub fn busy_pct_since(&self, earlier: &MachineTicks) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 * 100.0 / total as f64)
    }
}

/// [`MachineTicks`] from the text of `/proc/stat` (its `cpu` line: user nice system idle
/// iowait irq softirq steal ...; guest time is already inside user and nice).
pub fn parse_machine_ticks(stat: &str) -> Option<MachineTicks> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if v.len() < 5 {
        return None;
    }
    let total: u64 = v.iter().sum();
    let idle = v[3] + v[4];
    Some(MachineTicks {
        busy: total - idle,
        total,
    })
}

/// CPU time of the whole machine so far.
pub fn machine_ticks() -> Result<MachineTicks, ProcError> {
    let (path, text) = read("/proc/stat".to_owned())?;
    parse_machine_ticks(&text).ok_or(ProcError::Parse {
        path,
        what: "the cpu line",
    })
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 when that fails, the
/// value on every common Linux).
pub fn ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t: &u64| t > 0)
        .unwrap_or(100)
}

/// Samples a process's `VmRSS` periodically and keeps the largest value.
#[derive(Debug)]
pub struct RssSampler {
    max_kib: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> Self {
        let max_kib = Arc::new(AtomicU64::new(0));
        let max = Arc::clone(&max_kib);
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Ok(m) = memory(pid) {
                    max.fetch_max(m.rss_kib, Ordering::Relaxed);
                }
            }
        });
        Self { max_kib, task }
    }

    /// Stops sampling; returns the largest RSS seen, KiB (0 if none).
    pub fn stop(self) -> u64 {
        self.task.abort();
        self.max_kib.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_machine_ticks() {
        let stat = "cpu  100 5 50 800 45 0 10 0 0 0\ncpu0 50 2 25 400 20 0 5 0 0 0\nintr 1\n";
        let t = parse_machine_ticks(stat).unwrap();
        assert_eq!(
            t,
            MachineTicks {
                busy: 165,
                total: 1010
            }
        );
        let later = MachineTicks {
            busy: 265,
            total: 1210,
        };
        assert_eq!(later.busy_pct_since(&t), Some(50.0));
        assert_eq!(t.busy_pct_since(&t), None);
        assert_eq!(t.busy_pct_since(&later), None);
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5\n"), None);
        assert_eq!(parse_machine_ticks("cpu  1 2 x 4 5\n"), None);
        assert!(machine_ticks().unwrap().total > 0);
    }

    #[test]
    fn parses_stat() {
        let stat = "1234 (tollgate (proxy) x) S 1 1234 1234 0 -1 4194560 500 0 0 0 \
                    250 75 0 0 20 0 8 0 100 1000000 2000 18446744073709551615";
        assert_eq!(parse_stat_ticks(stat), Some(325));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn parses_status() {
        let status = "Name:\ttollgate-proxy\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\n\
                      VmRSS:\t   40000 kB\nThreads:\t8\n";
        assert_eq!(
            parse_status_memory(status),
            Some(Memory {
                rss_kib: 40_000,
                hwm_kib: 51_234
            })
        );
        assert_eq!(parse_status_memory("Name: x\n"), None);
    }

    #[tokio::test]
    async fn reads_own_process() {
        let pid = std::process::id();
        assert!(cpu_ticks(pid).is_ok());
        let m = memory(pid).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib / 2, "{m:?}");
        assert!(ticks_per_second() > 0);
        let s = RssSampler::start(pid, Duration::from_millis(5));
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert!(s.stop() > 0);
    }
}
