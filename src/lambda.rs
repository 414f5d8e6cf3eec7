//! The serverless shape (AWS Lambda, cargo feature `lambda`): one invocation is one batch run
//! (`godwit run PIPELINE --once`) bounded by the invocation's deadline minus a safety margin,
//! answered with a JSON summary. The binary is `src/bin/bootstrap.rs`.
//!
//! Event: `{"pipeline": "s3://bucket/key.toml" | "path/in/the/bundle.toml", "overrides": {…},
//! "safety_margin_s": 30}`. `overrides` is merged into the pipeline file (tables merge key by
//! key) before it is validated like any file.
//!
//! Summary: `{"status": "done" | "stopped at the deadline" | "too little time",
//! "pipeline", "mode", "more", "seconds", "tables": {name: {state, rows, changes}}, "rows",
//! "changes", "lag_seconds", "reloads_pending", "errors": [{table, error, remedy}]}`. `more`
//! is true when work was left for the next invocation: the deadline came first, or a table
//! reload is still asked for (`reloads_pending`). Another run holding the lease
//! gives `{"status": "already running", "holder": …}` (no error: the next schedule goes on).
//! A failed run is an error invocation, with the same message the CLI prints.

use std::time::{Duration, SystemTime};

use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::cli;
use crate::config::{self, Pipeline};
use crate::error::Error;
use crate::state::StateError;
use crate::task::run_context::RunContext;

/// The margin kept between the run's deadline and the invocation's, by default: the flush,
/// the checkpoint, the lease's release and the answer fit in it.
pub const DEFAULT_SAFETY_MARGIN: Duration = Duration::from_secs(30);
/// The smallest margin accepted (a smaller `safety_margin_s` is raised to it).
pub const MIN_SAFETY_MARGIN: Duration = Duration::from_secs(5);
/// When the deadline header is already past on arrival (cargo lambda's emulator sends such a
/// fixed value; Lambda never does), the run gets this long unless
/// `GODWIT_LAMBDA_FALLBACK_TIMEOUT_S` says otherwise.
pub const FALLBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// The invocation's event.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// `s3://bucket/key.toml`, or a path (relative to the function's working directory).
    pub pipeline: String,
    /// Pipeline keys to override, as a JSON object shaped like the TOML file.
    #[serde(default)]
    pub overrides: Option<serde_json::Map<String, Value>>,
    /// Seconds kept free before the invocation's deadline (default 30, at least 5).
    #[serde(default)]
    pub safety_margin_s: Option<f64>,
}

/// Runs the Lambda runtime loop (`AWS_LAMBDA_RUNTIME_API` and the usual Lambda variables must
/// be set).
pub async fn serve() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(lambda_runtime::service_fn(handle)).await
}

/// One invocation.
pub async fn handle(event: LambdaEvent<Value>) -> Result<Value, Diagnostic> {
    let (payload, context) = event.into_parts();
    let event: Event = serde_json::from_value(payload).map_err(|e| {
        diagnostic(
            "InvalidEvent",
            format!(
                "the event is not {{\"pipeline\": \"s3://bucket/key.toml\", \"overrides\": {{…}}, \
                 \"safety_margin_s\": 30}}: {e}"
            ),
        )
    })?;
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(context.deadline);
    match invoke(&event, deadline).await {
        Ok(v) => Ok(v),
        Err(e) => {
            tracing::error!(error_kind = e.kind().as_str(), "the invocation failed: {e}");
            Err(diagnostic(kind_name(&e), e.to_string()))
        }
    }
}

fn diagnostic(error_type: &str, message: String) -> Diagnostic {
    Diagnostic {
        error_type: error_type.into(),
        error_message: message,
    }
}

fn kind_name(e: &Error) -> &'static str {
    match e.kind() {
        crate::error::Kind::Config => "ConfigError",
        crate::error::Kind::Startup => "StartupError",
        _ => "RunError",
    }
}

/// The run's budget: the time to the invocation's deadline minus the margin. `None` when
/// that is not positive.
pub fn budget(
    deadline: SystemTime,
    now: SystemTime,
    margin: Duration,
    fallback: Duration,
) -> Option<Duration> {
    match deadline.duration_since(now) {
        Ok(left) => left.checked_sub(margin).filter(|b| !b.is_zero()),
        // Already past on arrival: not a real deadline (see FALLBACK_TIMEOUT).
        Err(_) => {
            tracing::warn!(
                "the invocation's deadline is already past on arrival (an emulator?): running \
                 for {} s instead",
                fallback.as_secs()
            );
            fallback.checked_sub(margin.min(fallback / 2))
        }
    }
}

/// The safety margin an event asks for, within bounds.
pub fn safety_margin(asked: Option<f64>) -> Duration {
    let from_env = std::env::var("GODWIT_LAMBDA_SAFETY_MARGIN_S")
        .ok()
        .and_then(|v| v.parse::<f64>().ok());
    match asked.or(from_env) {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s).max(MIN_SAFETY_MARGIN),
        _ => DEFAULT_SAFETY_MARGIN,
    }
}

async fn invoke(event: &Event, deadline: SystemTime) -> Result<Value, Error> {
    let started = std::time::Instant::now();
    let p = load(event).await?;
    let margin = safety_margin(event.safety_margin_s);
    let fallback = std::env::var("GODWIT_LAMBDA_FALLBACK_TIMEOUT_S")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs)
        .unwrap_or(FALLBACK_TIMEOUT);
    let Some(budget) = budget(deadline, SystemTime::now(), margin, fallback) else {
        tracing::warn!(
            safety_margin_s = margin.as_secs_f64(),
            "too little time left in this invocation to start a run"
        );
        return Ok(json!({
            "status": "too little time",
            "pipeline": p.name,
            "more": true,
            "safety_margin_s": margin.as_secs_f64(),
        }));
    };
    tracing::info!(
        budget_s = budget.as_secs_f64(),
        safety_margin_s = margin.as_secs_f64(),
        "invocation: a batch run until the deadline minus the safety margin"
    );
    let run = RunContext::new()
        .with_deadline(
            tokio::time::Instant::now() + budget,
            "the invocation's deadline (minus the safety margin) is near",
        )
        .for_invocation();
    let changes_before = crate::notify::pulse::totals().1;
    let outcome = cli::run::run_pipeline(&p, true, None, run.clone()).await;
    let summary = match outcome {
        Ok(s) => s,
        Err(e) => {
            if let Some(holder) = lease_holder(&e) {
                tracing::info!(holder = %holder, "another run holds the pipeline's lease");
                return Ok(json!({
                    "status": "already running",
                    "pipeline": p.name,
                    "holder": holder,
                    "more": true,
                }));
            }
            return Err(e);
        }
    };
    let (_, changes_after, lag) = crate::notify::pulse::totals();
    let changes = changes_after.saturating_sub(changes_before);
    // The task record, and the reloads still asked for (one that failed and is tried again,
    // one not started): work the next invocation does.
    let (record, reloads) = match crate::task::state_store(&p).await {
        Ok(store) => (
            store.load().await.ok().flatten(),
            store.reload_requests().await.unwrap_or_default(),
        ),
        Err(_) => (None, Vec::new()),
    };
    let mut tables = serde_json::Map::new();
    let mut errors = Vec::new();
    for (name, t) in record.iter().flat_map(|r| r.tables.iter()) {
        tables.insert(
            name.clone(),
            json!({
                "state": t.state.as_str(),
                "rows": t.full_load_rows,
                "changes": t.inserts + t.updates + t.deletes,
            }),
        );
        if t.state == crate::state::TableState::Error {
            errors.push(json!({
                "table": name,
                "error": t.last_error,
                "remedy": t.remedy,
            }));
        }
    }
    let stopped = summary.interrupted.is_some();
    let more = stopped || !reloads.is_empty();
    Ok(json!({
        "status": if stopped { "stopped at the deadline" } else { "done" },
        "pipeline": p.name,
        "mode": p.mode.as_str(),
        "more": more,
        "stopped_because": summary.interrupted,
        "seconds": started.elapsed().as_secs_f64(),
        "tables": tables,
        "rows": summary.rows,
        "changes": changes,
        "lag_seconds": if changes > 0 { lag } else { None },
        "task_state": record.as_ref().map(|r| r.state.clone()),
        "reloads_pending": reloads,
        "errors": errors,
    }))
}

/// The pipeline of the event, with its overrides merged in.
async fn load(event: &Event) -> Result<Pipeline, Error> {
    let Some(overrides) = event.overrides.as_ref().filter(|o| !o.is_empty()) else {
        return cli::load_pipeline(&event.pipeline).await;
    };
    let text = cli::read_pipeline_text(&event.pipeline).await?;
    let merged = merge_overrides(&text, overrides).map_err(|e| {
        Error::Config(config::ConfigError::new(
            event.pipeline.clone(),
            format!("applying the event's overrides: {e}"),
        ))
    })?;
    let p = config::parse(
        &merged,
        &format!("{} (with the event's overrides)", event.pipeline),
    )?;
    crate::notify::log_format::set_pipeline(&p.name);
    Ok(p)
}

/// `text` (TOML) with `overrides` (JSON, shaped like the file) merged in: tables merge key by
/// key, any other value replaces.
pub fn merge_overrides(
    text: &str,
    overrides: &serde_json::Map<String, Value>,
) -> Result<String, String> {
    let mut doc: toml::Table = text.parse().map_err(|e| format!("{e}"))?;
    let extra = toml::Table::try_from(overrides)
        .map_err(|e| format!("{e} (a JSON null has no TOML form: leave the key out instead)"))?;
    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }
    merge(&mut doc, extra);
    toml::to_string(&doc).map_err(|e| e.to_string())
}

/// The holder named by a "lease held" start-up failure.
fn lease_holder(e: &Error) -> Option<String> {
    let Error::Failed(f) = e else { return None };
    let source = std::error::Error::source(f.as_ref())?;
    match source.downcast_ref::<StateError>()? {
        StateError::LeaseHeld { holder, .. } => Some(holder.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_merge_into_tables_and_replace_values() {
        let text =
            "name = \"x\"\n[load]\nparallel = 4\nbatch_rows = 10\n[target]\nurl = \"file://a\"\n";
        let o: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"load": {"parallel": 1}, "target": {"url": "s3://b/p"}}"#)
                .unwrap();
        let merged: toml::Table = merge_overrides(text, &o).unwrap().parse().unwrap();
        assert_eq!(merged["load"]["parallel"].as_integer(), Some(1));
        assert_eq!(merged["load"]["batch_rows"].as_integer(), Some(10));
        assert_eq!(merged["target"]["url"].as_str(), Some("s3://b/p"));
        let bad: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"name": null}"#).unwrap();
        assert!(merge_overrides(text, &bad).unwrap_err().contains("null"));
    }

    #[test]
    fn the_budget_keeps_the_margin() {
        let now = SystemTime::now();
        let m = Duration::from_secs(30);
        let f = FALLBACK_TIMEOUT;
        assert_eq!(
            budget(now + Duration::from_secs(100), now, m, f),
            Some(Duration::from_secs(70))
        );
        assert_eq!(budget(now + Duration::from_secs(20), now, m, f), None);
        assert_eq!(
            budget(now - Duration::from_secs(5), now, m, f),
            Some(Duration::from_secs(30))
        );
        assert_eq!(safety_margin(Some(1.0)), MIN_SAFETY_MARGIN);
        assert_eq!(safety_margin(Some(45.0)), Duration::from_secs(45));
    }
}
