//! Metrics and health (`[metrics] listen`): `godwit run` serves Prometheus text on `/metrics`
//! and the pipeline's liveness on `/healthz`.
//!
//! The exposition is the `metrics-exporter-prometheus` recorder's (the `metrics` facade's
//! macros feed it); this module names every metric, installs the recorder with the label
//! `pipeline`, and serves both paths with hyper. Without `[metrics] listen` no recorder is
//! installed and every update here is a no-op.
//!
//! Health: the apply loop and the full load report progress ([`progress`]); `/healthz`
//! answers 503 once nothing moved for longer than `[metrics] health_threshold`, 200 before
//! the first progress (start-up) and while things move.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use metrics::{Unit, counter, describe_counter, describe_gauge, gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::EventKind;
use crate::config::Pipeline;
use crate::error::Error;

/// Rows of completed full loads of a table (also reloads), from `table.loaded`.
pub const ROWS_LOADED: &str = "godwit_rows_loaded_total";
/// Changes written by CDC (files and cache), label `op`: insert, update, delete, truncate.
pub const CHANGES_APPLIED: &str = "godwit_changes_applied_total";
/// Bytes of the files written, label `kind`: load or cdc.
pub const BYTES_WRITTEN: &str = "godwit_bytes_written_total";
/// Files written, label `kind`: load or cdc.
pub const FILES_WRITTEN: &str = "godwit_files_written_total";
pub const CDC_LAG_SECONDS: &str = "godwit_cdc_lag_seconds";
pub const CDC_LAG_BYTES: &str = "godwit_cdc_lag_bytes";
pub const SLOT_RETAINED_WAL: &str = "godwit_slot_retained_wal_bytes";
pub const BUFFERED_BYTES: &str = "godwit_buffered_bytes";
pub const SPILLED_BYTES: &str = "godwit_spilled_bytes";
pub const RESIDENT_MEMORY: &str = "godwit_process_resident_memory_bytes";
pub const DATA_ERRORS: &str = "godwit_data_errors_total";
pub const TABLE_ERRORS: &str = "godwit_table_errors_total";
/// Events emitted, labels `type` and `severity`.
pub const EVENTS: &str = "godwit_events_total";
pub const SNS_PUBLISHED: &str = "godwit_sns_events_published_total";
/// Events handed to the SNS publisher and not (yet) delivered.
pub const SNS_UNDELIVERED: &str = "godwit_sns_events_undelivered";
/// Seconds since the last progress (what `/healthz` compares with its threshold).
pub const PROGRESS_AGE: &str = "godwit_progress_age_seconds";

/// Whether a recorder is installed (`[metrics] listen` is set).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether metrics are served: the places that must work to produce a value (a query) ask.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// What moved last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// A full-load batch (the initial load, or a reload during CDC).
    FullLoad = 1,
    /// The replication stream: a message, a keepalive, or the walsender confirmed alive.
    Cdc = 2,
}

struct Health {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last progress.
    last: AtomicU64,
    /// 0 before any progress, else an [`Activity`].
    activity: AtomicU8,
    threshold_ms: AtomicU64,
}

static HEALTH: LazyLock<Health> = LazyLock::new(|| Health {
    epoch: Instant::now(),
    last: AtomicU64::new(0),
    activity: AtomicU8::new(0),
    threshold_ms: AtomicU64::new(60_000),
});

/// Something moved: `/healthz` is fine for another threshold.
pub fn progress(activity: Activity) {
    let h = &*HEALTH;
    h.last
        .store(h.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    h.activity.store(activity as u8, Ordering::Relaxed);
}

/// `/healthz`: 200 or 503, and one line saying why.
pub fn health() -> (bool, String) {
    let h = &*HEALTH;
    let activity = h.activity.load(Ordering::Relaxed);
    let threshold = Duration::from_millis(h.threshold_ms.load(Ordering::Relaxed));
    let what = match activity {
        0 => return (true, "ok: starting\n".into()),
        1 => "full load: no batch",
        _ => "CDC: nothing from the replication stream",
    };
    let age = age();
    if age > threshold {
        (
            false,
            format!(
                "{what} for {:.0}s (threshold {}s)\n",
                age.as_secs_f64(),
                threshold.as_secs()
            ),
        )
    } else {
        let doing = if activity == 1 { "full load" } else { "CDC" };
        (
            true,
            format!("ok: {doing}, last progress {:.1}s ago\n", age.as_secs_f64()),
        )
    }
}

/// Time since the last progress (zero before any).
fn age() -> Duration {
    let h = &*HEALTH;
    if h.activity.load(Ordering::Relaxed) == 0 {
        return Duration::ZERO;
    }
    let now = h.epoch.elapsed().as_millis() as u64;
    Duration::from_millis(now.saturating_sub(h.last.load(Ordering::Relaxed)))
}

/// Every event: counted by type; those carrying counts feed their metrics.
pub fn on_event(kind: &EventKind, event_type: &'static str, severity: &'static str) {
    if !enabled() {
        return;
    }
    counter!(EVENTS, "type" => event_type, "severity" => severity).increment(1);
    match kind {
        EventKind::TableLoaded {
            table,
            rows,
            bytes,
            files,
            data_errors,
            ..
        } => {
            counter!(ROWS_LOADED, "table" => table.clone()).increment(*rows);
            counter!(BYTES_WRITTEN, "table" => table.clone(), "kind" => "load").increment(*bytes);
            counter!(FILES_WRITTEN, "table" => table.clone(), "kind" => "load")
                .increment(*files as u64);
            if *data_errors > 0 {
                counter!(DATA_ERRORS, "table" => table.clone()).increment(*data_errors);
            }
        }
        EventKind::TableError { table, .. } => {
            counter!(TABLE_ERRORS, "table" => table.clone()).increment(1);
        }
        _ => {}
    }
}

/// Changes of a table CDC made durable (files and cache), and the data errors it skipped.
pub fn changes_applied(table: &str, counts: [(&'static str, u64); 4], data_errors: u64) {
    if !enabled() {
        return;
    }
    for (op, n) in counts {
        if n > 0 {
            counter!(CHANGES_APPLIED, "table" => table.to_string(), "op" => op).increment(n);
        }
    }
    if data_errors > 0 {
        counter!(DATA_ERRORS, "table" => table.to_string()).increment(data_errors);
    }
}

/// A CDC file was written.
pub fn cdc_file_written(table: &str, bytes: u64) {
    if !enabled() {
        return;
    }
    counter!(BYTES_WRITTEN, "table" => table.to_string(), "kind" => "cdc").increment(bytes);
    counter!(FILES_WRITTEN, "table" => table.to_string(), "kind" => "cdc").increment(1);
}

/// How late the last commit arrived.
pub fn set_cdc_lag_seconds(seconds: f64) {
    gauge!(CDC_LAG_SECONDS).set(seconds.max(0.0));
}

/// WAL written on the source that CDC has not processed yet, and WAL the slot holds back.
pub fn set_slot(lag_bytes: u64, retained_bytes: u64) {
    gauge!(CDC_LAG_BYTES).set(lag_bytes as f64);
    gauge!(SLOT_RETAINED_WAL).set(retained_bytes as f64);
}

/// An event was queued for SNS.
pub fn sns_queued() {
    gauge!(SNS_UNDELIVERED).increment(1.0);
}

/// SNS took `n` queued events.
pub fn sns_delivered(n: u64) {
    gauge!(SNS_UNDELIVERED).decrement(n as f64);
    counter!(SNS_PUBLISHED).increment(n);
}

/// The resident set size of this process (`VmRSS` of `/proc/self/status`).
/// The process's resident set (VmRSS), where /proc is there.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn describe() {
    describe_counter!(
        ROWS_LOADED,
        "Rows written by completed full loads of a table"
    );
    describe_counter!(
        CHANGES_APPLIED,
        "Changes CDC made durable, by operation (insert, update, delete, truncate)"
    );
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "Bytes of the files written (kind: load or cdc)"
    );
    describe_counter!(FILES_WRITTEN, "Files written (kind: load or cdc)");
    describe_gauge!(
        CDC_LAG_SECONDS,
        Unit::Seconds,
        "How late the last commit reached godwit (0 once caught up)"
    );
    describe_gauge!(
        CDC_LAG_BYTES,
        Unit::Bytes,
        "WAL on the source that CDC has not processed yet"
    );
    describe_gauge!(
        SLOT_RETAINED_WAL,
        Unit::Bytes,
        "WAL the replication slot holds back on the source"
    );
    describe_gauge!(
        BUFFERED_BYTES,
        Unit::Bytes,
        "Bytes held in memory under [limits] memory"
    );
    describe_gauge!(
        SPILLED_BYTES,
        Unit::Bytes,
        "Bytes spilled to [limits] spill_dir"
    );
    describe_gauge!(
        RESIDENT_MEMORY,
        Unit::Bytes,
        "Resident memory of the godwit process"
    );
    describe_counter!(DATA_ERRORS, "Rows or changes skipped for a data error");
    describe_counter!(TABLE_ERRORS, "Tables that went into Table error");
    describe_counter!(EVENTS, "Events emitted, by type and severity");
    describe_counter!(SNS_PUBLISHED, "Events SNS took");
    describe_gauge!(
        SNS_UNDELIVERED,
        "Events queued for SNS and not delivered yet"
    );
    describe_gauge!(
        PROGRESS_AGE,
        Unit::Seconds,
        "Seconds since the full load or CDC last moved (what /healthz compares)"
    );
}

/// The metrics server of a run; it stops with the process.
pub struct Server {
    pub addr: SocketAddr,
}

/// Starts serving `/metrics` and `/healthz` when `[metrics] listen` is set. A port that
/// cannot be listened on is a configuration error (exit 2, before anything is written).
pub async fn serve(p: &Pipeline) -> Result<Option<Server>, Error> {
    let Some(addr) = p.metrics.listen else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        Error::Config(
            p.error_at(
                "metrics.listen",
                format!("cannot serve metrics on {addr}: {e}"),
            )
            .with_hint("choose a free port, or leave [metrics] listen empty"),
        )
    })?;
    let addr = listener.local_addr().unwrap_or(addr);
    let handle = install(&p.name)
        .map_err(|e| Error::Startup(format!("cannot set up the metrics recorder: {e}")))?;
    HEALTH.threshold_ms.store(
        p.metrics.health_threshold.as_millis() as u64,
        Ordering::Relaxed,
    );
    tokio::spawn(accept(listener, handle));
    tracing::info!(address = %addr, "serving metrics on http://{addr}/metrics and health on http://{addr}/healthz");
    Ok(Some(Server { addr }))
}

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) with the label `pipeline`.
fn install(pipeline: &str) -> Result<PrometheusHandle, String> {
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new()
        .add_global_label("pipeline", pipeline)
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    ENABLED.store(true, Ordering::Relaxed);
    // Gauges exist from the start (0), so a dashboard sees them before they move.
    for g in [
        CDC_LAG_SECONDS,
        CDC_LAG_BYTES,
        SLOT_RETAINED_WAL,
        BUFFERED_BYTES,
        SPILLED_BYTES,
        SNS_UNDELIVERED,
    ] {
        gauge!(g).set(0.0);
    }
    Ok(HANDLE.get_or_init(|| handle).clone())
}

async fn accept(listener: tokio::net::TcpListener, handle: PrometheusHandle) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("metrics server: accepting a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, handle.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            // A client that went away is no news.
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    r
}

async fn answer(
    req: Request<Incoming>,
    handle: PrometheusHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(text(
            StatusCode::METHOD_NOT_ALLOWED,
            PLAIN,
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => {
            if let Some(rss) = resident_bytes() {
                gauge!(RESIDENT_MEMORY).set(rss as f64);
            }
            // The memory budget's counts, as they are at the scrape.
            let budget = crate::batch::budget::global();
            gauge!(BUFFERED_BYTES).set(budget.used() as f64);
            gauge!(SPILLED_BYTES).set(budget.spilled() as f64);
            gauge!(PROGRESS_AGE).set(age().as_secs_f64());
            handle.run_upkeep();
            text(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        }
        "/healthz" => {
            let (ok, why) = health();
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            text(status, PLAIN, why)
        }
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: godwit serves /metrics and /healthz\n".into(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_proc() {
        let rss = resident_bytes().expect("VmRSS in /proc/self/status");
        assert!(rss > 1 << 20, "{rss}");
    }
}
