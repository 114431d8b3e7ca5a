//! The broker's resident memory, from `/proc/<pid>/status` (Linux).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinHandle;

/// VmRSS of `pid` in KiB; `None` when the process or the field is not there.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The broker's RSS over one scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Rss {
    pub start_kib: u64,
    pub end_kib: u64,
    /// Highest sample, every 100 ms during the scenario.
    pub max_kib: u64,
}

/// Samples a process's RSS every 100 ms until [`finish`](RssSampler::finish).
#[derive(Debug)]
pub struct RssSampler {
    pid: Option<u32>,
    start: Option<u64>,
    max: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl RssSampler {
    pub fn start(pid: Option<u32>) -> RssSampler {
        let start = pid.and_then(vm_rss_kib);
        let max = Arc::new(AtomicU64::new(start.unwrap_or(0)));
        let task = pid.map(|pid| {
            let max = Arc::clone(&max);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    match vm_rss_kib(pid) {
                        Some(kib) => max.fetch_max(kib, Ordering::Relaxed),
                        None => return,
                    };
                }
            })
        });
        RssSampler {
            pid,
            start,
            max,
            task,
        }
    }

    pub fn finish(self) -> Option<Rss> {
        if let Some(task) = &self.task {
            task.abort();
        }
        let end = vm_rss_kib(self.pid?)?;
        Some(Rss {
            start_kib: self.start?,
            end_kib: end,
            max_kib: self.max.load(Ordering::Relaxed).max(end),
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_our_own_rss() {
        let kib = super::vm_rss_kib(std::process::id()).expect("VmRSS of this process");
        assert!(kib > 0);
    }
}
