//! One way to stop a run: SIGTERM/SIGINT, `--max-duration` and a Lambda invocation's remaining
//! time all feed one [`RunContext`], created once per run and handed down to the full load,
//! reloads, CDC and the sinks. Each of them stops cleanly when it says so: the full load
//! starts no new table or segment, CDC flushes, checkpoints and confirms, the sinks give up
//! retrying.
//!
//! Two moments matter:
//! - **stopping** (the soft stop): a signal came, or the deadline is reached. Nothing new
//!   starts; CDC ends at its next step.
//! - **the hard stop**: the deadline, or [`SIGNAL_GRACE`] after a signal (a second signal: at
//!   once). Work in flight that has not finished by then is abandoned cleanly (a load's file
//!   in progress is aborted: no partial object).
//!
//! A run with a deadline stops *at* the deadline: whoever sets it keeps a margin for the
//! flush and checkpoint after it (the Lambda handler subtracts its safety margin).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long work in flight may go on after SIGTERM/SIGINT before it is abandoned (a segment
/// about to finish finishes; a long one is aborted and loaded again by the next run).
pub const SIGNAL_GRACE: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Inner {
    /// Why the run was asked to stop (first reason wins), and when.
    stopped: Option<(String, Instant)>,
    /// A second signal: no grace.
    hard: bool,
}

/// The stop conditions of one run (cheap to clone; clones share them).
#[derive(Clone)]
pub struct RunContext {
    soft: CancellationToken,
    hard: CancellationToken,
    deadline: Option<(Instant, String)>,
    started: Instant,
    /// The deadline stands for the end of a Lambda invocation (a table that cannot be loaded
    /// in one is a table error, see `full_load`).
    bounded_invocation: bool,
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for RunContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunContext")
            .field("deadline", &self.deadline)
            .field("stopping", &self.is_stopping())
            .finish()
    }
}

impl Default for RunContext {
    fn default() -> RunContext {
        RunContext::new()
    }
}

impl RunContext {
    /// A run that stops only when asked to ([`RunContext::stop`], signals once watched).
    pub fn new() -> RunContext {
        RunContext {
            soft: CancellationToken::new(),
            hard: CancellationToken::new(),
            deadline: None,
            started: Instant::now(),
            bounded_invocation: false,
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    /// Stops at `at`; `why` is what the log says then (`--max-duration reached`).
    pub fn with_deadline(mut self, at: Instant, why: impl Into<String>) -> RunContext {
        self.deadline = Some((at, why.into()));
        self
    }

    /// The deadline is the end of one serverless invocation.
    pub fn for_invocation(mut self) -> RunContext {
        self.bounded_invocation = true;
        self
    }

    pub fn is_invocation(&self) -> bool {
        self.bounded_invocation
    }

    /// When the run started (when this context was made).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The deadline, if there is one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline.as_ref().map(|(d, _)| *d)
    }

    /// Time left before the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        self.deadline()
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Watches SIGTERM and SIGINT for as long as the process lives: the first one stops the
    /// run (in-flight work gets [`SIGNAL_GRACE`]), a second one stops it at once.
    pub fn watch_signals(&self) -> Result<(), crate::Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| crate::Error::Runtime(format!("cannot watch {name}: {e}")))
        };
        let mut term = watch(SignalKind::terminate(), "SIGTERM")?;
        let mut int = watch(SignalKind::interrupt(), "SIGINT")?;
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let why = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if me.soft.is_cancelled() {
                    tracing::warn!("{why} again: stopping at once");
                    me.inner.lock().expect("lock").hard = true;
                    me.hard.cancel();
                } else {
                    me.stop(why);
                }
            }
        });
        Ok(())
    }

    /// Asks the run to stop (`why` goes into the log and the summary); in-flight work gets
    /// [`SIGNAL_GRACE`].
    pub fn stop(&self, why: &str) {
        {
            let mut inner = self.inner.lock().expect("lock");
            if inner.stopped.is_none() {
                inner.stopped = Some((why.to_string(), Instant::now()));
            }
        }
        self.soft.cancel();
    }

    /// Whether the run was asked to stop or reached its deadline.
    pub fn is_stopping(&self) -> bool {
        self.soft.is_cancelled() || self.deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// Whether work in flight must be abandoned now.
    pub fn is_hard_stopped(&self) -> bool {
        self.hard.is_cancelled() || Instant::now() >= self.hard_deadline_now()
    }

    /// Why the run stops (`None` while it does not).
    pub fn reason(&self) -> Option<String> {
        if let Some((why, _)) = &self.inner.lock().expect("lock").stopped {
            return Some(why.clone());
        }
        match &self.deadline {
            Some((d, why)) if Instant::now() >= *d => Some(why.clone()),
            _ => None,
        }
    }

    /// Whether the stop came from the deadline (not from a signal).
    pub fn stopped_by_deadline(&self) -> bool {
        self.inner.lock().expect("lock").stopped.is_none() && self.is_stopping()
    }

    /// Resolves once the run is asked to stop or reaches its deadline; says why.
    pub async fn stopping(&self) -> String {
        let deadline = self.deadline();
        tokio::select! {
            _ = self.soft.cancelled() => {}
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        self.reason().unwrap_or_else(|| "stop".into())
    }

    /// The instant work in flight must end by, as known now (far away while nothing stops).
    fn hard_deadline_now(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let inner = self.inner.lock().expect("lock");
        let by_signal = match &inner.stopped {
            Some(_) if inner.hard => Instant::now(),
            Some((_, at)) => *at + SIGNAL_GRACE,
            None => far,
        };
        let by_deadline = self.deadline().unwrap_or(far);
        by_signal.min(by_deadline)
    }

    /// Resolves when work in flight must be abandoned: the deadline, [`SIGNAL_GRACE`] after a
    /// stop, or a second signal.
    pub async fn hard_stop(&self) {
        loop {
            let until = self.hard_deadline_now();
            if Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = self.hard.cancelled() => return,
                _ = tokio::time::sleep_until(until) => return,
                // A stop moves the hard deadline nearer: look again.
                _ = self.soft.cancelled(), if !self.soft.is_cancelled() => {}
            }
        }
    }
}

static CURRENT: OnceLock<Mutex<Option<RunContext>>> = OnceLock::new();

/// Makes `ctx` the run context the sinks see (one run per process at a time).
pub fn install(ctx: &RunContext) {
    *CURRENT
        .get_or_init(|| Mutex::new(None))
        .lock()
        .expect("lock") = Some(ctx.clone());
}

/// The installed run context (a never-stopping one when none is installed).
pub fn current() -> RunContext {
    CURRENT
        .get_or_init(|| Mutex::new(None))
        .lock()
        .expect("lock")
        .clone()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_deadline_stops_and_hard_stops_at_once() {
        let ctx = RunContext::new()
            .with_deadline(Instant::now() + Duration::from_millis(100), "deadline");
        assert!(!ctx.is_stopping() && !ctx.is_hard_stopped());
        assert_eq!(ctx.stopping().await, "deadline");
        assert!(ctx.is_stopping() && ctx.is_hard_stopped() && ctx.stopped_by_deadline());
        ctx.hard_stop().await;
    }

    #[tokio::test]
    async fn a_stop_leaves_a_grace_to_work_in_flight() {
        let ctx = RunContext::new();
        let other = ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            other.stop("SIGTERM");
        });
        assert_eq!(ctx.stopping().await, "SIGTERM");
        assert!(ctx.is_stopping() && !ctx.is_hard_stopped());
        let early = tokio::time::timeout(Duration::from_millis(200), ctx.hard_stop()).await;
        assert!(early.is_err(), "work in flight gets its grace");
        assert!(!ctx.stopped_by_deadline());
        // A deadline nearer than the grace wins.
        let ctx = RunContext::new()
            .with_deadline(Instant::now() + Duration::from_millis(300), "deadline");
        ctx.stop("SIGINT");
        let t0 = Instant::now();
        ctx.hard_stop().await;
        assert!(t0.elapsed() < Duration::from_secs(1));
        assert_eq!(ctx.reason().as_deref(), Some("SIGINT"));
    }
}
