//! Crash points for tests: `godwit run --crash-after-objects N` (hidden) ends the process
//! abruptly right after its N-th object is complete and before anything records it — the
//! moment a crash is most likely to leave an object that the state does not know about.
//! `--fail-object N` (hidden) makes the N-th object fail to complete instead (an I/O error:
//! nothing becomes visible), the way a full disk or a refused upload would.

use std::sync::atomic::{AtomicU64, Ordering};

static CRASH_AFTER_OBJECTS: AtomicU64 = AtomicU64::new(0);
static FAIL_OBJECT: AtomicU64 = AtomicU64::new(0);

/// Arms the failure point (0 disarms it).
pub fn fail_object(n: u64) {
    FAIL_OBJECT.store(n, Ordering::SeqCst);
}

/// Called before an object is completed: an error when this is the armed object.
pub fn object_completing(key: &str) -> std::io::Result<()> {
    let before = FAIL_OBJECT
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .unwrap_or(0);
    if before == 1 {
        return Err(std::io::Error::other(format!(
            "{key}: failure injected (--fail-object)"
        )));
    }
    Ok(())
}

/// Arms the crash point (0 disarms it).
pub fn crash_after_objects(n: u64) {
    CRASH_AFTER_OBJECTS.store(n, Ordering::SeqCst);
}

/// Called when an object is complete; ends the process when the armed count is reached.
pub fn object_completed() {
    let armed = CRASH_AFTER_OBJECTS.load(Ordering::SeqCst);
    if armed == 0 {
        return;
    }
    if CRASH_AFTER_OBJECTS.fetch_sub(1, Ordering::SeqCst) == 1 {
        eprintln!("godwit: crash point reached (--crash-after-objects)");
        std::process::abort();
    }
}
