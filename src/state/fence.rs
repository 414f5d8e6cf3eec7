//! The lease as a fence: a cheap cloneable handle that every writer checks right before it
//! makes something visible — a data object completed or deleted, a state write, a slot
//! confirmation. It trips when the lease's deadline on the monotonic clock passes (the run was
//! paused, or could not renew) or when the lease is found taken; once tripped it stays tripped,
//! and the run stops writing.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The fence of one held lease (or an open one that never trips).
#[derive(Clone, Default)]
pub struct Fence {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// The lease, for messages.
    lease: String,
    state: Mutex<Guarded>,
}

struct Guarded {
    /// Past this moment another run may take the lease over.
    deadline: Instant,
    /// Why the lease is lost, once it is.
    lost: Option<String>,
}

/// The lease is lost: this run must not write any more.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the lease {lease} was lost ({why}); another run may own the pipeline now, so this run stopped writing — the run that holds the lease carries on"
)]
pub struct LeaseLost {
    pub lease: String,
    pub why: String,
}

impl Fence {
    /// A fence that never trips: a lease that cannot be lost while the process lives
    /// (the local `flock`), or no lease at all.
    pub fn open() -> Fence {
        Fence { inner: None }
    }

    /// The fence of `lease`, valid until `deadline`.
    pub(crate) fn until(lease: String, deadline: Instant) -> Fence {
        Fence {
            inner: Some(Arc::new(Inner {
                lease,
                state: Mutex::new(Guarded {
                    deadline,
                    lost: None,
                }),
            })),
        }
    }

    fn guard(inner: &Inner) -> MutexGuard<'_, Guarded> {
        inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves the deadline forward after a successful renewal (never backwards; a tripped
    /// fence stays tripped).
    pub(crate) fn extend(&self, deadline: Instant) {
        if let Some(inner) = &self.inner {
            let mut g = Fence::guard(inner);
            if g.lost.is_none() && deadline > g.deadline {
                g.deadline = deadline;
            }
        }
    }

    /// The lease is lost for `why`.
    pub(crate) fn trip(&self, why: String) {
        if let Some(inner) = &self.inner {
            let mut g = Fence::guard(inner);
            if g.lost.is_none() {
                tracing::error!(lease = %inner.lease, "lease lost: {why}");
                g.lost = Some(why);
            }
        }
    }

    /// Ok while this run may write; the reason once the lease is lost or its deadline passed.
    pub fn check(&self) -> Result<(), LeaseLost> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let mut g = Fence::guard(inner);
        if g.lost.is_none() {
            let now = Instant::now();
            if now >= g.deadline {
                let late = now - g.deadline;
                let why = format!(
                    "it was not renewed in time: its deadline passed {:.1} s ago (the process was paused, or the state store could not be reached)",
                    late.as_secs_f64()
                );
                tracing::error!(lease = %inner.lease, "lease lost: {why}");
                g.lost = Some(why);
            }
        }
        match &g.lost {
            None => Ok(()),
            Some(why) => Err(LeaseLost {
                lease: inner.lease.clone(),
                why: why.clone(),
            }),
        }
    }

    /// Resolves once the lease is lost (never for an open fence).
    pub async fn lost(&self) -> LeaseLost {
        if self.inner.is_none() {
            return std::future::pending().await;
        }
        loop {
            if let Err(lost) = self.check() {
                return lost;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_fence_never_trips() {
        let f = Fence::open();
        f.trip("ignored".into());
        assert!(f.check().is_ok());
    }

    #[test]
    fn a_passed_deadline_trips_for_good() {
        let f = Fence::until(
            "s3://b/lease".into(),
            Instant::now() + Duration::from_millis(30),
        );
        assert!(f.check().is_ok());
        std::thread::sleep(Duration::from_millis(40));
        let lost = f.check().unwrap_err();
        assert!(lost.to_string().contains("s3://b/lease"), "{lost}");
        assert!(lost.why.contains("not renewed in time"), "{lost}");
        // A late renewal does not bring it back.
        f.extend(Instant::now() + Duration::from_secs(60));
        assert!(f.check().is_err());
    }

    #[test]
    fn a_renewal_moves_the_deadline_and_a_trip_is_shared_by_clones() {
        let f = Fence::until("l".into(), Instant::now() + Duration::from_millis(30));
        f.extend(Instant::now() + Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(40));
        assert!(f.check().is_ok());
        let clone = f.clone();
        f.trip("another run took the lease over".into());
        let lost = clone.check().unwrap_err();
        assert_eq!(lost.why, "another run took the lease over");
    }
}
