//! Per-table progress bars on a terminal (rows, rows/s, ETA from `reltuples`). Off a
//! terminal nothing is drawn; logs carry the progress instead.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bars being drawn, so log lines can be printed above them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// A writer for log lines that does not tear the progress bars.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match BARS.get() {
            Some(m) => m.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// A bar and the row counter it shows.
type Tracked = (ProgressBar, Arc<AtomicU64>);

/// The progress display of one run.
#[derive(Clone)]
pub struct Progress {
    multi: Option<MultiProgress>,
    tracked: Arc<Mutex<Vec<Tracked>>>,
}

impl Progress {
    /// Draws bars only when `enabled` (stderr is a terminal).
    pub fn new(enabled: bool) -> Progress {
        let multi = enabled.then(|| {
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4));
            let _ = BARS.set(m.clone());
            m
        });
        let progress = Progress {
            multi,
            tracked: Arc::new(Mutex::new(Vec::new())),
        };
        if progress.multi.is_some() {
            let tracked = progress.tracked.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    for (bar, rows) in tracked.lock().map(|t| t.clone()).unwrap_or_default() {
                        bar.set_position(rows.load(Ordering::Relaxed));
                    }
                }
            });
        }
        progress
    }

    /// Starts a bar for `table`; `rows` is the counter the loader increments.
    pub fn table(&self, table: &str, estimated_rows: u64, rows: Arc<AtomicU64>) -> TableBar {
        let Some(multi) = &self.multi else {
            return TableBar(None);
        };
        let bar = multi.add(ProgressBar::new(estimated_rows.max(1)));
        let style = ProgressStyle::with_template(
            "{prefix:30!} {bar:30} {human_pos:>12} rows {rate:>12} ETA {eta}",
        )
        .map(|st| {
            st.with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} rows/s", state.per_sec());
                },
            )
        })
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        bar.set_style(style);
        bar.set_prefix(table.to_string());
        if let Ok(mut t) = self.tracked.lock() {
            t.push((bar.clone(), rows));
        }
        TableBar(Some(bar))
    }
}

/// One table's bar.
pub struct TableBar(Option<ProgressBar>);

impl TableBar {
    /// Ends the bar with a final message (`loaded`, `error`).
    pub fn finish(&self, rows: u64, message: &str) {
        if let Some(bar) = &self.0 {
            bar.set_length(rows.max(1));
            bar.set_position(rows);
            bar.set_style(
                ProgressStyle::with_template("{prefix:30!} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.finish_with_message(format!("{message} ({rows} rows)"));
        }
    }
}
