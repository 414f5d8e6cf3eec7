//! `godwit run PIPELINE`: runs the pipeline per its mode.

use std::io::IsTerminal;
use std::time::Duration;

use crate::config::{Mode, Pipeline};
use crate::error::Error;
use crate::task::cdc::{self, CdcOptions};
use crate::task::full_load::{self, RunOptions, RunSummary};
use crate::task::run_context::{self, RunContext};
use crate::task::shard::Shard;

/// Runs the pipeline; returns 0, or 3 when a table ended in `Table error`. SIGTERM/SIGINT and
/// `--max-duration` stop it cleanly (exit 0, or 3).
pub async fn execute(
    path: &str,
    once: bool,
    max_duration: Option<Duration>,
    shard: Option<Shard>,
) -> Result<i32, Error> {
    // One run context for the whole run: created before anything else, so a signal during
    // start-up or the full load stops it cleanly too.
    let mut run = RunContext::new();
    if let Some(d) = max_duration {
        run = run.with_deadline(tokio::time::Instant::now() + d, "--max-duration reached");
    }
    run.watch_signals()?;
    let p = super::load_pipeline(path).await?;
    let summary = run_pipeline(&p, once, shard, run).await?;
    Ok(if summary.tables_in_error > 0 { 3 } else { 0 })
}

/// Runs a loaded pipeline under `run` (the CLI's `run`, and a Lambda invocation); `shard`:
/// this process's share of a sharded initial load (`--shard I/N`).
pub async fn run_pipeline(
    p: &Pipeline,
    once: bool,
    shard: Option<Shard>,
    run: RunContext,
) -> Result<RunSummary, Error> {
    if let Some(shard) = shard {
        check_shard(p, shard)?;
    }
    run_context::install(&run);
    // `/metrics` and `/healthz` for as long as the run lasts ([metrics] listen).
    let _metrics = crate::notify::metrics::serve(p).await?;
    // A progress line in the log every 30 s (throughput, CDC lag, memory).
    let pulse = crate::notify::pulse::start();
    let progress = std::io::stderr().is_terminal();
    let summary = match (p.mode, shard) {
        // Shards 2..N of a sharded initial load only load their share, whatever the mode:
        // the coordinator (shard 1) completes the tables and, with CDC, follows the slot.
        (_, Some(shard)) if !shard.coordinates() => {
            full_load::run_shard(
                p,
                RunOptions {
                    progress,
                    run,
                    shard: Some(shard),
                },
                shard,
            )
            .await
        }
        (Mode::FullLoad, _) => {
            full_load::run(
                p,
                RunOptions {
                    progress,
                    run,
                    shard,
                },
            )
            .await
        }
        (Mode::Cdc | Mode::FullLoadAndCdc, _) => {
            cdc::run(
                p,
                CdcOptions {
                    once,
                    progress,
                    run,
                    shard,
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
    summary
}

/// `run --shard I/N` is for pipelines with an initial load, without `[cache]` (see
/// `task::shard`).
fn check_shard(p: &Pipeline, shard: Shard) -> Result<(), Error> {
    if p.mode == Mode::Cdc {
        return Err(Error::Config(
            p.error_at(
                "mode",
                format!("--shard {shard} splits an initial load, and mode \"cdc\" has none"),
            )
            .with_hint(
                "use --shard with mode = \"full-load\" or \"full-load-and-cdc\", or run without it",
            ),
        ));
    }
    if p.cache.is_some() {
        return Err(Error::Config(
            p.error_at(
                "cache",
                format!("--shard {shard}: a sharded load does not warm [cache] yet"),
            )
            .with_hint("load without --shard, or leave [cache] out of the sharded load"),
        ));
    }
    Ok(())
}
