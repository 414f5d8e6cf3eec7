//! `godwit run PIPELINE`: runs the pipeline per its mode.

use std::io::IsTerminal;
use std::time::Duration;

use crate::config::Mode;
use crate::error::Error;
use crate::task::cdc::{self, CdcOptions};
use crate::task::full_load::{self, RunOptions};

/// Runs the pipeline; returns 0, or 3 when a table ended in `Table error`.
pub async fn execute(path: &str, once: bool, max_duration: Option<Duration>) -> Result<i32, Error> {
    let p = super::load_pipeline(path).await?;
    // `/metrics` and `/healthz` for as long as the run lasts ([metrics] listen).
    let _metrics = crate::notify::metrics::serve(&p).await?;
    // A progress line in the log every 30 s (throughput, CDC lag, memory).
    let pulse = crate::notify::pulse::start();
    let progress = std::io::stderr().is_terminal();
    let summary = match p.mode {
        Mode::FullLoad => full_load::run(&p, RunOptions { progress }).await,
        Mode::Cdc | Mode::FullLoadAndCdc => {
            cdc::run(
                &p,
                CdcOptions {
                    once,
                    max_duration,
                    progress,
                },
            )
            .await
        }
    };
    pulse.abort();
    // The closing line says where the events went (also after a failure, once there are any).
    let has_events = tokio::fs::metadata(&p.notify.events_file)
        .await
        .is_ok_and(|m| m.len() > 0);
    if has_events {
        tracing::info!(
            events_file = %p.notify.events_file.display(),
            "events are in {}",
            p.notify.events_file.display()
        );
    }
    Ok(if summary?.tables_in_error > 0 { 3 } else { 0 })
}
