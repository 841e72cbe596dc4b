//! The process's own series (`process_*`, the names every Prometheus client library uses),
//! read from `/proc/self` at each scrape.
//!
//! Not the `prometheus` crate's process collector: it keeps CPU time as an integer counter,
//! so `rate(process_cpu_seconds_total[1m])` of a relay that is mostly idle moves in steps of
//! a whole second; here CPU time is kept to the kernel's tick.

use prometheus::{Counter, IntGauge, Registry};

use super::{Spec, registered, spec};

const CPU: Spec = spec(
    "process_cpu_seconds_total",
    "Total user and system CPU time spent in seconds.",
    &[],
);
const OPEN_FDS: Spec = spec("process_open_fds", "Number of open file descriptors.", &[]);
const MAX_FDS: Spec = spec(
    "process_max_fds",
    "Maximum number of open file descriptors.",
    &[],
);
const VIRTUAL: Spec = spec(
    "process_virtual_memory_bytes",
    "Virtual memory size in bytes.",
    &[],
);
const RESIDENT: Spec = spec(
    "process_resident_memory_bytes",
    "Resident memory size in bytes.",
    &[],
);
const START: Spec = spec(
    "process_start_time_seconds",
    "Start time of the process since unix epoch in seconds.",
    &[],
);
const THREADS: Spec = spec(
    "process_threads",
    "Number of OS threads in the process.",
    &[],
);

/// The `process_*` series.
#[derive(Debug)]
pub struct ProcessMetrics {
    cpu: Counter,
    open_fds: IntGauge,
    max_fds: IntGauge,
    virtual_bytes: IntGauge,
    resident_bytes: IntGauge,
    start_time: IntGauge,
    threads: IntGauge,
}

impl ProcessMetrics {
    pub(super) fn register(r: &Registry) -> prometheus::Result<ProcessMetrics> {
        Ok(ProcessMetrics {
            cpu: registered(r, Counter::with_opts(CPU.opts())?)?,
            open_fds: OPEN_FDS.int_gauge(r)?,
            max_fds: MAX_FDS.int_gauge(r)?,
            virtual_bytes: VIRTUAL.int_gauge(r)?,
            resident_bytes: RESIDENT.int_gauge(r)?,
            start_time: START.int_gauge(r)?,
            threads: THREADS.int_gauge(r)?,
        })
    }

    /// Reads `/proc/self` (at scrape time); a value that cannot be read keeps its last one.
    pub fn refresh(&self) {
        use procfs::process::{LimitValue, Process};
        let Ok(me) = Process::myself() else {
            return;
        };
        let to_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        if let Ok(n) = me.fd_count() {
            self.open_fds.set(to_i64(n as u64));
        }
        if let Ok(limits) = me.limits()
            && let LimitValue::Value(max) = limits.max_open_files.soft_limit
        {
            self.max_fds.set(to_i64(max));
        }
        let Ok(stat) = me.stat() else {
            return;
        };
        let ticks = procfs::ticks_per_second().max(1);
        let cpu = (stat.utime + stat.stime) as f64 / ticks as f64;
        // A counter only goes up: add what was used since the last scrape.
        let used = cpu - self.cpu.get();
        if used > 0.0 {
            self.cpu.inc_by(used);
        }
        self.virtual_bytes.set(to_i64(stat.vsize));
        self.resident_bytes
            .set(to_i64(stat.rss.saturating_mul(procfs::page_size())));
        self.threads.set(stat.num_threads);
        if let Ok(boot) = procfs::boot_time_secs() {
            self.start_time.set(to_i64(boot + stat.starttime / ticks));
        }
    }
}
