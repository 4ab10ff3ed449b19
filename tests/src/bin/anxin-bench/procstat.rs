//! CPU and memory of running processes, read from /proc while a scenario
//! runs.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// Kernel clock ticks per second for /proc/<pid>/stat times (USER_HZ, 100 on
/// every Linux this project runs on).
const TICKS_PER_SEC: f64 = 100.0;

/// user + system CPU time of a process, in ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Resident set size in bytes.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[derive(Debug, Clone)]
pub struct Usage {
    pub name: String,
    /// Average over the watch, in percent of one core.
    pub cpu_pct: f64,
    pub peak_rss_mb: f64,
}

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: CPU {:.0}% of a core, peak RSS {:.1} MB",
            self.name, self.cpu_pct, self.peak_rss_mb
        )
    }
}

/// Samples processes until [`Watch::finish`].
pub struct Watch {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Vec<Usage>>,
}

impl Watch {
    pub fn start(processes: Vec<(String, u32)>) -> Self {
        let (stop, mut stopped) = oneshot::channel();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let first: Vec<u64> = processes
                .iter()
                .map(|(_, pid)| cpu_ticks(*pid).unwrap_or(0))
                .collect();
            let mut peaks = vec![0u64; processes.len()];
            let mut last: Vec<u64> = first.clone();
            loop {
                for (i, (_, pid)) in processes.iter().enumerate() {
                    peaks[i] = peaks[i].max(rss_bytes(*pid).unwrap_or(0));
                    if let Some(ticks) = cpu_ticks(*pid) {
                        last[i] = ticks;
                    }
                }
                tokio::select! {
                    _ = &mut stopped => break,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            let secs = started.elapsed().as_secs_f64().max(f64::EPSILON);
            processes
                .into_iter()
                .enumerate()
                .map(|(i, (name, _))| Usage {
                    name,
                    cpu_pct: (last[i] - first[i]) as f64 / TICKS_PER_SEC / secs * 100.0,
                    peak_rss_mb: peaks[i] as f64 / 1e6,
                })
                .collect()
        });
        Self { stop, task }
    }

    pub async fn finish(self) -> Vec<Usage> {
        let _ = self.stop.send(());
        self.task.await.expect("sampler task")
    }
}
