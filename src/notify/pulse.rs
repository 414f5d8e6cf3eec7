//! The periodic progress line: every 30 seconds of a run (`--progress-every`, hidden), one log line with what moved since
//! the last one (rows loaded, changes applied, their rates), the CDC lag, the memory held and
//! spilled, and the process's resident set — enough to follow a run from its log alone.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::batch::budget;

/// Rows the full load (and reloads) read so far in this process.
static ROWS_LOADED: AtomicU64 = AtomicU64::new(0);
/// Changes CDC applied so far in this process.
static CHANGES: AtomicU64 = AtomicU64::new(0);
/// How late the last commit arrived, in milliseconds (-1: none yet).
static LAG_MS: AtomicI64 = AtomicI64::new(-1);

/// How often the line is logged, in milliseconds.
static EVERY_MS: AtomicU64 = AtomicU64::new(30_000);

/// Sets how often the line is logged (a test knob; 30 s by default).
pub fn set_every(every: Duration) {
    EVERY_MS.store(every.as_millis().max(1) as u64, Ordering::Relaxed);
}

/// Counts rows read by a load.
pub fn rows_loaded(n: u64) {
    ROWS_LOADED.fetch_add(n, Ordering::Relaxed);
}

/// Counts changes taken from the stream.
pub fn changes(n: u64) {
    CHANGES.fetch_add(n, Ordering::Relaxed);
}

/// Notes the lag of the last commit received.
pub fn lag(seconds: f64) {
    LAG_MS.store((seconds * 1000.0) as i64, Ordering::Relaxed);
}

/// Rows loaded and changes taken so far in this process, and the lag of the last commit
/// received (seconds; `None` before any).
pub fn totals() -> (u64, u64, Option<f64>) {
    let lag_ms = LAG_MS.load(Ordering::Relaxed);
    (
        ROWS_LOADED.load(Ordering::Relaxed),
        CHANGES.load(Ordering::Relaxed),
        (lag_ms >= 0).then_some(lag_ms as f64 / 1000.0),
    )
}

/// Logs the progress line until the returned task is aborted (or dropped with the runtime).
pub fn start() -> tokio::task::JoinHandle<()> {
    let every = Duration::from_millis(EVERY_MS.load(Ordering::Relaxed));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let (mut rows, mut changes, mut at) = (0u64, 0u64, Instant::now());
        loop {
            tick.tick().await;
            let seconds = at.elapsed().as_secs_f64().max(0.001);
            let rows_now = ROWS_LOADED.load(Ordering::Relaxed);
            let changes_now = CHANGES.load(Ordering::Relaxed);
            let lag_ms = LAG_MS.load(Ordering::Relaxed);
            let b = budget::global();
            tracing::info!(
                rows = rows_now,
                rows_per_s = ((rows_now - rows) as f64 / seconds).round(),
                changes = changes_now,
                changes_per_s = ((changes_now - changes) as f64 / seconds).round(),
                cdc_lag_seconds = (lag_ms >= 0).then_some(lag_ms as f64 / 1000.0),
                buffered_bytes = b.used(),
                spilled_bytes = b.spilled(),
                rss_bytes = super::metrics::resident_bytes(),
                "progress"
            );
            (rows, changes, at) = (rows_now, changes_now, Instant::now());
        }
    })
}
