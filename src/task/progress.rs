//! What a run draws on a terminal: per-table progress bars during a full load (rows, rows/s,
//! ETA from the row estimate) and one live line while CDC follows the stream. Off a terminal
//! nothing is drawn; logs carry the progress instead.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use indicatif::{
    HumanCount, HumanDuration, MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle,
};

/// The one set of bars of this process, so log lines can be printed above them.
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The process's bars (created when first needed, drawn on stderr).
fn bars() -> &'static MultiProgress {
    BARS.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(4)))
}

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
        let progress = Progress {
            multi: enabled.then(|| bars().clone()),
            tracked: Arc::new(Mutex::new(Vec::new())),
        };
        if progress.multi.is_some() {
            let tracked = Arc::downgrade(&progress.tracked);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    // Ends with the run's last handle.
                    let Some(tracked) = tracked.upgrade() else {
                        break;
                    };
                    for (bar, rows) in tracked.lock().map(|t| t.clone()).unwrap_or_default() {
                        bar.set_position(rows.load(Ordering::Relaxed));
                    }
                }
            });
        }
        progress
    }

    /// Starts a bar for `table`; `rows` is the counter the loader increments. Without an
    /// estimate (a table never analysed) the bar has no length: rows and rate, no ETA.
    pub fn table(
        &self,
        table: &str,
        estimated_rows: Option<u64>,
        rows: Arc<AtomicU64>,
    ) -> TableBar {
        let Some(multi) = &self.multi else {
            return TableBar(None);
        };
        let (bar, template) = match estimated_rows {
            Some(n) => (
                ProgressBar::new(n.max(1)),
                "{prefix:30!} {bar:30} {human_pos:>12} rows {rate:>14} {eta_text}",
            ),
            None => (
                ProgressBar::no_length(),
                "{prefix:30!} {spinner} {human_pos:>12} rows {rate:>14} (row count unknown: not analysed)",
            ),
        };
        let bar = multi.add(bar);
        let style = ProgressStyle::with_template(template)
            .map(|st| {
                st.with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&rate_text(state.pos(), state.per_sec()));
                    },
                )
                .with_key(
                    "eta_text",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&eta_text(state.pos(), state.len(), state.per_sec()));
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

/// "starting" until rows arrived and a rate exists, then `12,345 rows/s`.
pub(crate) fn rate_text(pos: u64, per_sec: f64) -> String {
    if pos == 0 || !per_sec.is_finite() || per_sec < 1.0 {
        "starting".into()
    } else {
        format!("{} rows/s", HumanCount(per_sec.round() as u64))
    }
}

/// `ETA 3m` once a rate exists and the length is known; empty otherwise, and when the
/// estimate is already passed.
pub(crate) fn eta_text(pos: u64, len: Option<u64>, per_sec: f64) -> String {
    match len {
        Some(len) if pos > 0 && pos < len && per_sec.is_finite() && per_sec >= 1.0 => {
            let left = Duration::from_secs_f64((len - pos) as f64 / per_sec);
            format!("ETA {:#}", HumanDuration(left))
        }
        _ => String::new(),
    }
}

/// The closing text of a table's bar: `loaded (2,000,000 rows)`.
pub(crate) fn finish_text(message: &str, rows: u64) -> String {
    format!("{message} ({} rows)", HumanCount(rows))
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
            bar.finish_with_message(finish_text(message, rows));
        }
    }
}

/// What the CDC live line shows.
#[derive(Debug, Clone, Copy, Default)]
pub struct CdcStats {
    /// Changes written to files by this run.
    pub changes: u64,
    /// Changes read but not yet in a file.
    pub buffered: u64,
    /// CDC files written by this run.
    pub files: u64,
    /// Seconds between the last commit and its arrival.
    pub lag_seconds: Option<f64>,
    /// Commit time of the last transaction received (µs since the epoch, UTC).
    pub last_commit: Option<i64>,
}

/// `CDC  12,345 changes written, 120 buffered, 3 files, lag 0.4s, last commit 16:45:01 UTC`.
pub(crate) fn cdc_text(s: &CdcStats) -> String {
    let mut line = format!(
        "{} changes written, {} buffered, {} {}",
        HumanCount(s.changes),
        HumanCount(s.buffered),
        HumanCount(s.files),
        if s.files == 1 { "file" } else { "files" }
    );
    match s
        .last_commit
        .and_then(chrono::DateTime::from_timestamp_micros)
    {
        Some(t) => {
            if let Some(lag) = s.lag_seconds {
                line.push_str(&format!(", lag {:.1}s", lag.max(0.0)));
            }
            line.push_str(&format!(
                ", last commit {} UTC",
                t.format("%Y-%m-%d %H:%M:%S")
            ));
        }
        None => line.push_str(", no commit received yet"),
    }
    line
}

/// The live line of a CDC run (nothing off a terminal).
pub struct LiveLine(Option<ProgressBar>);

impl LiveLine {
    /// Starts the line when `enabled` (stderr is a terminal).
    pub fn new(enabled: bool, label: &str) -> LiveLine {
        if !enabled {
            return LiveLine(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_prefix(label.to_string());
        bar.set_message(cdc_text(&CdcStats::default()));
        let bar = bars().add(bar);
        bar.enable_steady_tick(Duration::from_millis(250));
        LiveLine(Some(bar))
    }

    /// Shows `stats`.
    pub fn update(&self, stats: &CdcStats) {
        if let Some(bar) = &self.0 {
            bar.set_message(cdc_text(stats));
        }
    }

    /// Shows a state instead of the figures (`reconnecting in 10s`), keeping the figures.
    pub fn note(&self, stats: &CdcStats, note: &str) {
        if let Some(bar) = &self.0 {
            bar.set_message(format!("{note}; {}", cdc_text(stats)));
        }
    }

    /// Leaves the last figures on screen.
    pub fn finish(&self, stats: &CdcStats) {
        if let Some(bar) = &self.0 {
            bar.finish_with_message(format!("stopped: {}", cdc_text(stats)));
        }
    }
}

impl Drop for LiveLine {
    fn drop(&mut self) {
        if let Some(bar) = &self.0
            && !bar.is_finished()
        {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_says_starting_until_rows_arrive() {
        assert_eq!(rate_text(0, 0.0), "starting");
        assert_eq!(rate_text(0, 1234.0), "starting");
        assert_eq!(rate_text(10, f64::NAN), "starting");
        assert_eq!(rate_text(10, 0.2), "starting");
        assert_eq!(rate_text(5000, 1234567.4), "1,234,567 rows/s");
    }

    #[test]
    fn the_eta_appears_only_with_a_rate_and_a_length() {
        assert_eq!(eta_text(0, Some(1000), 0.0), "");
        assert_eq!(eta_text(100, None, 50.0), "");
        assert_eq!(eta_text(100, Some(1000), 0.0), "");
        assert_eq!(eta_text(2000, Some(1000), 50.0), "");
        assert_eq!(eta_text(100, Some(1000), 10.0), "ETA 2m");
        assert_eq!(eta_text(100, Some(1000), 100.0), "ETA 9s");
    }

    #[test]
    fn the_closing_line_groups_thousands_like_the_bar() {
        assert_eq!(finish_text("loaded", 2_000_000), "loaded (2,000,000 rows)");
        assert_eq!(finish_text("error", 0), "error (0 rows)");
        assert_eq!(finish_text("loaded", 999), "loaded (999 rows)");
    }

    #[test]
    fn the_cdc_line_shows_changes_files_lag_and_last_commit() {
        assert_eq!(
            cdc_text(&CdcStats::default()),
            "0 changes written, 0 buffered, 0 files, no commit received yet"
        );
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-30T16:45:01.250Z")
            .unwrap()
            .timestamp_micros();
        assert_eq!(
            cdc_text(&CdcStats {
                changes: 12_345,
                buffered: 120,
                files: 1,
                lag_seconds: Some(0.42),
                last_commit: Some(t),
            }),
            "12,345 changes written, 120 buffered, 1 file, lag 0.4s, last commit 2026-11-30 16:45:01 UTC"
        );
    }
}
