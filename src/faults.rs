//! Crash points for tests: `godwit run --crash-after-objects N` (hidden) ends the process
//! abruptly right after its N-th object is complete and before anything records it — the
//! moment a crash is most likely to leave an object that the state does not know about.

use std::sync::atomic::{AtomicU64, Ordering};

static CRASH_AFTER_OBJECTS: AtomicU64 = AtomicU64::new(0);

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
