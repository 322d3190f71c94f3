//! The machine the figures were taken on, and what the bench reads about processes from
//! `/proc`: resident memory, CPU time and open-file limits.

use std::io;

use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`, 100 on Linux).
const USER_HZ: f64 = 100.0;

/// The machine, printed at the top of every report.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cores: usize,
    /// CPU model name from `/proc/cpuinfo`.
    pub cpu_model: String,
    /// Total memory in bytes, from `/proc/meminfo`.
    pub memory_bytes: u64,
    /// Kernel release.
    pub kernel: String,
    /// Open-file limit (soft, hard) of the bench process and the brokers it starts.
    pub nofile: (u64, u64),
    /// 1-minute load average when the run started: other work competing for the cores.
    pub load_average: Option<f64>,
}

impl Machine {
    /// Reads the machine's description; missing pieces read as "unknown" or 0.
    pub fn read(nofile: (u64, u64)) -> Self {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".to_owned());
        let memory_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| status_kib(&s, "MemTotal:"))
            .map_or(0, |kib| kib * 1024);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_else(|_| "unknown".to_owned());
        let load_average = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok());
        Self {
            cores,
            cpu_model,
            memory_bytes,
            kernel,
            nofile,
            load_average,
        }
    }

    /// Whether other work was keeping the cores busy when the run started.
    pub fn busy(&self) -> bool {
        self.load_average
            .is_some_and(|load| load > 0.5 * self.cores as f64)
    }

    /// One line for the report header.
    pub fn summary(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB memory, Linux {}, open-file limit {} (hard {}), \
             load average {}",
            self.cores,
            self.cpu_model,
            self.memory_bytes as f64 / (1u64 << 30) as f64,
            self.kernel,
            self.nofile.0,
            self.nofile.1,
            self.load_average
                .map_or_else(|| "unknown".to_owned(), |l| format!("{l:.2}"))
        )
    }
}

/// Raises this process's open-file soft limit to its hard limit; processes started
/// afterwards inherit it. Returns (soft, hard) as they are now.
pub fn raise_nofile_limit() -> (u64, u64) {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        tracing::warn!(error = %e, "could not raise the open-file limit");
    }
    rlimit::getrlimit(rlimit::Resource::NOFILE).unwrap_or((0, 0))
}

/// The open-file soft limit of another process.
pub fn nofile_limit_of(pid: u32) -> Option<u64> {
    let pid = i32::try_from(pid).ok()?;
    rlimit::ProcLimits::read_process(pid)
        .ok()?
        .max_open_files
        .and_then(|l| l.soft_limit)
}

/// Resident set size of a process in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    read_rss(&format!("/proc/{pid}/status"))
}

/// Resident set size of this process in bytes.
pub fn self_rss_bytes() -> io::Result<u64> {
    read_rss("/proc/self/status")
}

fn read_rss(path: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(path)?;
    status_kib(&status, "VmRSS:")
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

fn status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU time (user + system, all threads) a process has used, in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // rest starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / USER_HZ)
}

/// CPU use of a process over an interval, as a percentage of one core.
#[derive(Debug, Clone, Copy)]
pub struct CpuMeter {
    pid: Option<u32>,
    start_cpu: Option<f64>,
    start: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring a process (`None`: this one).
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            start_cpu: cpu_seconds(pid),
            start: std::time::Instant::now(),
        }
    }

    /// Percent of one core used since [`CpuMeter::start`].
    pub fn percent(&self) -> Option<f64> {
        let used = cpu_seconds(self.pid)? - self.start_cpu?;
        let wall = self.start.elapsed().as_secs_f64();
        (wall > 0.0).then(|| 100.0 * used / wall)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        assert!(self_rss_bytes().expect("rss") > 0);
        assert!(cpu_seconds(None).is_some());
        assert!(rss_bytes(std::process::id()).expect("rss by pid") > 0);
        let m = Machine::read((1, 2));
        assert!(m.cores >= 1);
        assert!(m.summary().contains("cores"));
    }

    #[test]
    fn status_lines_parse() {
        let text = "Name:\tx\nVmRSS:\t  1234 kB\n";
        assert_eq!(status_kib(text, "VmRSS:"), Some(1234));
        assert_eq!(status_kib(text, "VmHWM:"), None);
    }
}
