//! The memory budget (`[limits] memory`): one count of every byte godwit buffers — COPY
//! batches on their way to the encoder, CDC table buffers, Parquet row groups in progress and
//! upload parts — shared by the whole process.
//!
//! Holders take a [`Reservation`] and give it back by dropping it. A holder that can wait
//! ([`Budget::reserve`]) waits while the budget is full: that is the back-pressure into COPY
//! and into part uploads. A holder that cannot wait (a CDC buffer growing row by row) takes
//! its bytes anyway ([`Budget::take`]) and asks [`Budget::over`] whether to spill. Either way
//! the first time the budget is exceeded emits `memory.pressure` (what was done), and coming
//! back under three quarters of it emits `memory.recovered`.
//!
//! A reservation larger than the whole budget (one huge value) is granted once nothing else
//! is reserved: it is processed alone, and `memory.pressure` says so.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use tokio::sync::Notify;

use crate::notify::{EventKind, Notifier};

/// The process's budget.
pub struct Budget {
    limit: u64,
    used: AtomicU64,
    /// Bytes currently in spill files.
    spilled: AtomicU64,
    freed: Notify,
    /// Since when the budget is under pressure (`None`: not).
    pressure: Mutex<Option<Instant>>,
    /// Whether a pressure episode is open (a cheap check on every release).
    pressed: AtomicBool,
    notifier: OnceLock<Arc<Notifier>>,
}

static GLOBAL: OnceLock<Arc<Budget>> = OnceLock::new();

/// The process's budget: the one [`install`]ed, or an unlimited one.
pub fn global() -> &'static Arc<Budget> {
    GLOBAL.get_or_init(|| Arc::new(Budget::new(u64::MAX)))
}

/// Sets the process's budget (the first call wins: one pipeline per process).
pub fn install(limit: u64) -> &'static Arc<Budget> {
    GLOBAL.get_or_init(|| Arc::new(Budget::new(limit)))
}

/// Bytes held against the budget; given back on drop.
pub struct Reservation {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Reservation {
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `bytes` from now on (more without waiting, or fewer).
    pub fn set(&mut self, bytes: u64) {
        if bytes > self.bytes {
            self.budget.add(bytes - self.bytes);
        } else if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Reservation({})", self.bytes)
    }
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit: limit.max(1),
            used: AtomicU64::new(0),
            spilled: AtomicU64::new(0),
            freed: Notify::new(),
            pressure: Mutex::new(None),
            pressed: AtomicBool::new(false),
            notifier: OnceLock::new(),
        }
    }

    /// Where `memory.pressure` and `memory.recovered` go (the first call wins).
    pub fn notify_to(&self, notifier: Arc<Notifier>) {
        let _ = self.notifier.set(notifier);
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes held in memory now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes in spill files now.
    pub fn spilled(&self) -> u64 {
        self.spilled.load(Ordering::Relaxed)
    }

    /// Whether what is held passed the budget.
    pub fn over(&self) -> bool {
        self.used() > self.limit
    }

    /// Whether `bytes` more fit now.
    pub fn fits(&self, bytes: u64) -> bool {
        self.used().saturating_add(bytes) <= self.limit
    }

    /// Takes `bytes` without waiting, whatever is held (see [`Budget::over`]).
    pub fn take(self: &Arc<Self>, bytes: u64) -> Reservation {
        self.add(bytes);
        Reservation {
            budget: self.clone(),
            bytes,
        }
    }

    /// Takes `bytes` if they fit now.
    pub fn try_reserve(self: &Arc<Self>, bytes: u64) -> Option<Reservation> {
        let mut used = self.used();
        loop {
            if used.saturating_add(bytes) > self.limit && used > 0 {
                return None;
            }
            match self.used.compare_exchange_weak(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    if bytes > self.limit {
                        self.pressed(&format!(
                            "one batch of {bytes} bytes is larger than the whole budget: it is \
                             processed alone"
                        ));
                    }
                    return Some(Reservation {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    /// Takes `bytes`, waiting while they do not fit (`what` waits: the pressure event says
    /// so). Granted alone when larger than the whole budget.
    pub async fn reserve(self: &Arc<Self>, bytes: u64, what: &str) -> Reservation {
        let mut noted = false;
        loop {
            let freed = self.freed.notified();
            if let Some(r) = self.try_reserve(bytes) {
                return r;
            }
            if !noted {
                noted = true;
                self.pressed(what);
            }
            // Releases wake every waiter; a timer covers a wake-up that raced the check.
            let _ = tokio::time::timeout(std::time::Duration::from_millis(50), freed).await;
        }
    }

    /// Counts `bytes` written to a spill file (`delta` < 0: read back or removed).
    pub fn spill(&self, delta: i64) {
        if delta >= 0 {
            self.spilled.fetch_add(delta as u64, Ordering::Relaxed);
        } else {
            let _ = self
                .spilled
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some(s.saturating_sub(delta.unsigned_abs()))
                });
            self.maybe_recovered(self.used());
        }
    }

    fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::AcqRel);
    }

    fn release(&self, bytes: u64) {
        let before = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            })
            .unwrap_or(0);
        self.freed.notify_waiters();
        self.maybe_recovered(before.saturating_sub(bytes));
    }

    /// The end of a pressure episode: memory back under three quarters of the budget and
    /// nothing left in spill files.
    fn maybe_recovered(&self, used: u64) {
        if self.pressed.load(Ordering::Relaxed) && used <= self.limit / 4 * 3 && self.spilled() == 0
        {
            self.recovered();
        }
    }

    /// The budget was exceeded and `action` was taken: the first time in an episode,
    /// `memory.pressure`.
    pub fn pressed(&self, action: &str) {
        let mut p = self.pressure.lock().unwrap_or_else(|e| e.into_inner());
        if p.is_some() {
            tracing::debug!(
                buffered_bytes = self.used(),
                spilled_bytes = self.spilled(),
                "memory pressure: {action}"
            );
            return;
        }
        *p = Some(Instant::now());
        self.pressed.store(true, Ordering::Relaxed);
        drop(p);
        if let Some(n) = self.notifier.get() {
            n.emit(EventKind::MemoryPressure {
                limit_bytes: self.limit,
                buffered_bytes: self.used(),
                spilled_bytes: self.spilled(),
                action: action.to_string(),
            });
        }
    }

    fn recovered(&self) {
        let mut p = self.pressure.lock().unwrap_or_else(|e| e.into_inner());
        let Some(since) = p.take() else {
            return;
        };
        self.pressed.store(false, Ordering::Relaxed);
        drop(p);
        if let Some(n) = self.notifier.get() {
            n.emit(EventKind::MemoryRecovered {
                limit_bytes: self.limit,
                buffered_bytes: self.used(),
                spilled_bytes: self.spilled(),
                seconds: since.elapsed().as_secs_f64(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_budget_makes_reservations_wait_until_bytes_are_given_back() {
        let b = Arc::new(Budget::new(100));
        let first = b.reserve(60, "test").await;
        assert!(b.try_reserve(50).is_none());
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.reserve(50, "test").await.bytes() })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        drop(first);
        assert_eq!(waiter.await.unwrap(), 50);
        assert_eq!(b.used(), 0);
    }

    #[tokio::test]
    async fn a_reservation_larger_than_the_budget_is_granted_alone() {
        let b = Arc::new(Budget::new(100));
        let big = b.reserve(500, "test").await;
        assert!(b.over());
        assert!(b.try_reserve(1).is_none());
        drop(big);
        assert!(b.try_reserve(1).is_some());
    }

    #[test]
    fn taken_bytes_count_and_resize() {
        let b = Arc::new(Budget::new(100));
        let mut r = b.take(30);
        r.set(130);
        assert!(b.over());
        r.set(10);
        assert_eq!(b.used(), 10);
        drop(r);
        assert_eq!(b.used(), 0);
    }
}
