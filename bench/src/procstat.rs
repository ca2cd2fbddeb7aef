//! CPU time and memory of a process, read from /proc/<pid>/stat and /proc/<pid>/status.

use std::fs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Failures reading /proc.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The file could not be read (the process may have exited).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file did not have the expected layout.
    #[error("unexpected layout of {0}")]
    Layout(String),
}

/// A process observed through /proc.
#[derive(Debug, Clone)]
pub struct Proc {
    /// `"self"` or a pid.
    id: String,
    ticks_per_s: f64,
}

/// One observation of a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sample {
    /// User plus system CPU time, in seconds.
    pub cpu_s: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
    /// Peak resident set size so far (VmHWM), in KiB.
    pub hwm_kib: u64,
}

impl Proc {
    /// The process with this pid.
    pub fn pid(pid: u32) -> Self {
        Proc {
            id: pid.to_string(),
            ticks_per_s: clock_ticks(),
        }
    }

    /// Thread `tid` of process `pid`.
    pub fn task(pid: u32, tid: &str) -> Self {
        Proc {
            id: format!("{pid}/task/{tid}"),
            ticks_per_s: clock_ticks(),
        }
    }

    /// The current process.
    pub fn current() -> Self {
        Proc {
            id: "self".into(),
            ticks_per_s: clock_ticks(),
        }
    }

    fn read(&self, file: &str) -> Result<String, ProcError> {
        let path = format!("/proc/{}/{file}", self.id);
        fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
    }

    /// User + system CPU seconds consumed so far.
    pub fn cpu_seconds(&self) -> Result<f64, ProcError> {
        let stat = self.read("stat")?;
        // The command name may hold spaces: fields are counted after its closing parenthesis.
        let after = stat
            .rfind(')')
            .map(|i| &stat[i + 1..])
            .ok_or_else(|| ProcError::Layout("stat".into()))?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // After the name: state is field 3, utime 14 and stime 15 (1-based) => indexes 11, 12.
        let parse = |i: usize| -> Result<f64, ProcError> {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .map(|v| v as f64)
                .ok_or_else(|| ProcError::Layout("stat".into()))
        };
        Ok((parse(11)? + parse(12)?) / self.ticks_per_s)
    }

    /// User + system CPU seconds of this process's threads whose name (`comm`) is `comm`;
    /// `None` when there is none.
    pub fn thread_cpu_seconds(&self, comm: &str) -> Option<f64> {
        let dir = fs::read_dir(format!("/proc/{}/task", self.id)).ok()?;
        let mut total = None;
        for entry in dir.flatten() {
            let tid = entry.file_name().to_string_lossy().into_owned();
            let name = fs::read_to_string(format!("/proc/{}/task/{tid}/comm", self.id)).ok();
            if name.as_deref().map(str::trim_end) != Some(comm) {
                continue;
            }
            let thread = Proc {
                id: format!("{}/task/{tid}", self.id),
                ticks_per_s: self.ticks_per_s,
            };
            if let Ok(cpu) = thread.cpu_seconds() {
                *total.get_or_insert(0.0) += cpu;
            }
        }
        total
    }

    /// Seconds this process's threads have spent runnable but waiting for a CPU (the second
    /// field of each `/proc/<pid>/task/<tid>/schedstat`), summed over the threads alive now.
    pub fn run_delay_seconds(&self) -> Option<f64> {
        let dir = fs::read_dir(format!("/proc/{}/task", self.id)).ok()?;
        let mut total = 0u64;
        for entry in dir.flatten() {
            if let Ok(s) = fs::read_to_string(entry.path().join("schedstat")) {
                total += s
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Some(total as f64 / 1e9)
    }

    /// Current and peak resident set size in KiB.
    pub fn memory_kib(&self) -> Result<(u64, u64), ProcError> {
        let status = self.read("status")?;
        let field = |name: &str| -> Result<u64, ProcError> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| ProcError::Layout(format!("status: {name}")))
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// CPU and memory now.
    pub fn sample(&self) -> Result<Sample, ProcError> {
        let cpu_s = self.cpu_seconds()?;
        let (rss_kib, hwm_kib) = self.memory_kib()?;
        Ok(Sample {
            cpu_s,
            rss_kib,
            hwm_kib,
        })
    }
}

/// CPU seconds of each PostgreSQL backend serving one database at one moment.
#[derive(Debug, Clone, Default)]
pub struct Backends {
    cpu: std::collections::HashMap<u32, f64>,
}

impl Backends {
    /// CPU used since `before`: the growth of backends seen both times plus the whole CPU of
    /// backends that started since (backends that exited in between are missed).
    pub fn cpu_since(&self, before: &Backends) -> f64 {
        self.cpu
            .iter()
            .map(|(pid, now)| now - before.cpu.get(pid).copied().unwrap_or(0.0))
            .sum()
    }

    /// Backends seen.
    pub fn len(&self) -> usize {
        self.cpu.len()
    }

    /// True when none was seen.
    pub fn is_empty(&self) -> bool {
        self.cpu.is_empty()
    }
}

/// The PostgreSQL backends of database `db` on this machine: processes whose command line
/// reads `postgres: [<cluster name>:] <user> <db> …` (how PostgreSQL titles a backend).
pub fn postgres_backends(db: &str) -> Backends {
    let mut out = Backends::default();
    let Ok(dir) = fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd);
        if !is_backend_of(&cmd, db) {
            continue;
        }
        if let Ok(cpu) = Proc::pid(pid).cpu_seconds() {
            out.cpu.insert(pid, cpu);
        }
    }
    out
}

fn is_backend_of(title: &str, db: &str) -> bool {
    let words: Vec<&str> = title.split_whitespace().collect();
    if words.first() != Some(&"postgres:") {
        return false;
    }
    // An optional `cluster_name:` ("15/main:"), then the user, then the database.
    let at = if words.get(1).is_some_and(|w| w.ends_with(':')) {
        3
    } else {
        2
    };
    words.get(at) == Some(&db)
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture this runs on; `getconf` confirms when present.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// Samples a process's RSS every few milliseconds on a background thread and keeps the peak;
/// stops when dropped.
#[derive(Debug)]
pub struct PeakRss {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl PeakRss {
    /// Starts sampling `proc` every `every`.
    pub fn start(proc: Proc, every: Duration) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok((rss, _)) = proc.memory_kib() {
                    p.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        });
        PeakRss { peak, stop }
    }

    /// The highest RSS seen so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for PeakRss {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let me = Proc::current();
        let s = me.sample().expect("reads /proc/self");
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        assert!(s.cpu_s >= 0.0);
        let pid = Proc::pid(std::process::id());
        assert!(pid.sample().expect("reads /proc/<pid>").rss_kib > 0);
        assert!(Proc::pid(u32::MAX).sample().is_err());
        assert!(me.run_delay_seconds().is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn backend_titles() {
        assert!(is_backend_of(
            "postgres: 15/main: postgres bench_1 127.0.0.1(5) idle",
            "bench_1"
        ));
        assert!(is_backend_of(
            "postgres: postgres bench_1 127.0.0.1(5) idle",
            "bench_1"
        ));
        assert!(!is_backend_of("postgres: 15/main: walwriter", "bench_1"));
        assert!(!is_backend_of(
            "postgres: 15/main: postgres other 127.0.0.1(5)",
            "bench_1"
        ));
    }
}
