//! The machine: description, CPU pinning, open-file limit, process memory.

use std::path::Path;

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};
use serde::Serialize;

/// What the report says about the machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Online CPUs (`nproc --all`).
    pub nproc: usize,
    /// CPUs this process may run on (its affinity mask at start).
    pub usable_cpus: Vec<usize>,
    pub cpu_model: String,
    pub kernel: String,
    pub os: String,
    pub mem_total_mib: u64,
    /// `/proc/loadavg` when the run started: other work on the machine skews figures.
    pub loadavg_at_start: String,
    pub loadavg_at_end: String,
    /// Open-file soft limit after raising it.
    pub nofile_limit: u64,
    /// tollgate commit (`git describe`), when run from a checkout.
    pub tollgate_revision: String,
    /// How the components were placed on CPUs.
    pub placement: String,
}

impl Machine {
    pub fn describe(usable_cpus: Vec<usize>, nofile_limit: u64, placement: String) -> Self {
        let cpuinfo = read("/proc/cpuinfo");
        let nproc = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1);
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "unknown".into());
        let mem_total_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Self {
            nproc,
            usable_cpus,
            cpu_model,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
            mem_total_mib,
            loadavg_at_start: loadavg(),
            loadavg_at_end: String::new(),
            nofile_limit,
            tollgate_revision: git_revision(),
            placement,
        }
    }

    pub fn one_line(&self) -> String {
        format!(
            "{} × {} ({} usable), {} MiB RAM, Linux {}, {}; load avg at start {}, at end {}",
            self.nproc,
            self.cpu_model,
            self.usable_cpus.len(),
            self.mem_total_mib,
            self.kernel,
            self.os,
            self.loadavg_at_start,
            self.loadavg_at_end,
        )
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

pub fn loadavg() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn git_revision() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

// ------------------------------------------------------------------ CPU placement

/// The CPUs the calling thread may run on.
pub fn current_cpus() -> Vec<usize> {
    match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect(),
    }
}

/// Which CPUs the gateway (tollgate or nginx) and everything else (load generator,
/// mock Ollama, the bench itself) run on.
#[derive(Debug, Clone)]
pub struct Placement {
    pub gateway: Vec<usize>,
    pub generator: Vec<usize>,
    pub pinned: bool,
}

impl Placement {
    /// With two or more usable CPUs and pinning wanted: the last CPU for the gateway, the
    /// others for the generator and the mock. Otherwise everything everywhere.
    pub fn choose(usable: &[usize], pin: bool) -> Self {
        if pin && usable.len() >= 2 {
            let (others, last) = usable.split_at(usable.len() - 1);
            Self {
                gateway: last.to_vec(),
                generator: others.to_vec(),
                pinned: true,
            }
        } else {
            Self {
                gateway: usable.to_vec(),
                generator: usable.to_vec(),
                pinned: false,
            }
        }
    }

    pub fn describe(&self) -> String {
        if self.pinned {
            format!(
                "pinned: gateway (tollgate runtime / tollgate process / nginx, 1 worker per CPU) \
                 on CPU {:?}; load generator, mock Ollama and bench on CPU {:?}",
                self.gateway, self.generator
            )
        } else {
            format!(
                "not pinned: every component may run on CPUs {:?} (tollgate runtime: one \
                 worker per CPU)",
                self.gateway
            )
        }
    }
}

/// Seconds `cpus` have spent busy (everything but idle and iowait) since boot, from
/// `/proc/stat`: with the gateway alone on its pinned CPU, what it spent serving, the
/// kernel's loopback networking for it included. `None` when unreadable.
pub fn cpu_busy_s(cpus: &[usize]) -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks = busy_ticks(&stat, cpus)?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// Busy ticks of `cpus` in a `/proc/stat` text: user, nice, system, irq, softirq, steal.
fn busy_ticks(stat: &str, cpus: &[usize]) -> Option<u64> {
    let mut ticks = 0;
    let mut found = 0;
    for line in stat.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|f| f.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&cpu) {
            continue;
        }
        let v: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
        if v.len() < 8 {
            return None;
        }
        ticks += v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
        found += 1;
    }
    (found == cpus.len()).then_some(ticks)
}

/// Restricts the calling thread (and the threads and processes it later creates) to
/// `cpus`. Best effort: a refused mask leaves the thread as it was.
pub fn pin_current_thread(cpus: &[usize]) -> bool {
    let mut set = CpuSet::new();
    for &c in cpus {
        set.set(c);
    }
    sched_setaffinity(None, &set).is_ok()
}

// ------------------------------------------------------------------ limits and memory

/// Raises the soft open-file limit to the hard limit; returns the soft limit in force.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let current = getrlimit(Resource::Nofile);
    if let Some(max) = current.maximum
        && current.current.is_none_or(|c| c < max)
    {
        let wanted = rustix::process::Rlimit {
            current: Some(max),
            maximum: Some(max),
        };
        let _ = setrlimit(Resource::Nofile, wanted);
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Resident memory of a process from `/proc/<pid>/status`, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Rss {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: peak resident since the process started.
    pub hwm_kib: u64,
}

pub fn rss_of(pid: u32) -> Option<Rss> {
    parse_status(&std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

fn parse_status(status: &str) -> Option<Rss> {
    let field = |name: &str| {
        status.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|r| r.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
    };
    Some(Rss {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

// ------------------------------------------------------------------ a local Redis

/// A local Redis server moved off the gateway's CPU for the run. In production Redis
/// runs elsewhere; here, left unpinned, it would take turns on the gateway's core and
/// its work would be counted as tollgate's. Dropping this restores every thread's mask.
#[derive(Debug)]
pub struct PinnedRedis {
    pub pid: i32,
    restore: Vec<(rustix::process::Pid, CpuSet)>,
}

impl PinnedRedis {
    /// Asks the Redis at `url` for its `process_id` (`INFO server`) and pins each of its
    /// threads to `cpus`. `None` when Redis is not reachable without a password, not a
    /// process this user may pin, or not on this machine.
    pub fn pin(url: &str, cpus: &[usize]) -> Option<Self> {
        let pid = redis_server_pid(url)?;
        let mut set = CpuSet::new();
        for &c in cpus {
            set.set(c);
        }
        let mut restore = Vec::new();
        for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
            let Some(tid) = entry
                .ok()
                .and_then(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .and_then(rustix::process::Pid::from_raw)
            else {
                continue;
            };
            let Ok(before) = sched_getaffinity(Some(tid)) else {
                continue;
            };
            if sched_setaffinity(Some(tid), &set).is_ok() {
                restore.push((tid, before));
            }
        }
        (!restore.is_empty()).then_some(Self { pid, restore })
    }
}

impl Drop for PinnedRedis {
    fn drop(&mut self) {
        for (tid, before) in &self.restore {
            let _ = sched_setaffinity(Some(*tid), before);
        }
    }
}

/// `process_id` from `INFO server`, over a plain RESP exchange on loopback.
fn redis_server_pid(url: &str) -> Option<i32> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("redis://")?;
    let host_port = rest.split('/').next()?;
    if host_port.contains('@') {
        return None; // Credentials: leave that server alone.
    }
    let host = host_port.rsplit_once(':').map_or(host_port, |(h, _)| h);
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return None;
    }
    let addr = if host_port.contains(':') {
        host_port.replace("localhost", "127.0.0.1")
    } else {
        format!("{host_port}:6379")
    };
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .ok()?;
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
        .ok()?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    while !reply.windows(11).any(|w| w == b"process_id:") || !reply.ends_with(b"\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    parse_process_id(&String::from_utf8_lossy(&reply))
}

fn parse_process_id(info: &str) -> Option<i32> {
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_busy_ticks_of_the_given_cpus_only() {
        let stat = "cpu  10 0 10 100 5 0 0 0 0 0\n\
                    cpu0 1 2 3 50 4 5 6 7 0 0\n\
                    cpu1 10 20 30 50 40 50 60 70 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(busy_ticks(stat, &[1]), Some(10 + 20 + 30 + 50 + 60 + 70));
        assert_eq!(busy_ticks(stat, &[0, 1]), Some(1 + 2 + 3 + 5 + 6 + 7 + 240));
        assert_eq!(busy_ticks(stat, &[2]), None, "a CPU the text does not have");
    }

    #[test]
    fn parses_proc_status() {
        let status = "Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status),
            Some(Rss {
                rss_kib: 10240,
                hwm_kib: 20480
            })
        );
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[test]
    fn reads_the_redis_process_id() {
        let info =
            "$60\r\n# Server\r\nredis_version:7.0.15\r\nprocess_id:4242\r\ntcp_port:6379\r\n";
        assert_eq!(parse_process_id(info), Some(4242));
        assert_eq!(parse_process_id("# Server\r\n"), None);
    }

    #[test]
    fn placement_gives_the_gateway_the_last_cpu() {
        let p = Placement::choose(&[0, 1], true);
        assert_eq!((p.gateway, p.generator), (vec![1], vec![0]));
        let p = Placement::choose(&[0, 1, 2, 3], true);
        assert_eq!((p.gateway, p.generator), (vec![3], vec![0, 1, 2]));
        let p = Placement::choose(&[0], true);
        assert!(!p.pinned);
        let p = Placement::choose(&[0, 1], false);
        assert_eq!((p.gateway, p.generator), (vec![0, 1], vec![0, 1]));
    }
}
