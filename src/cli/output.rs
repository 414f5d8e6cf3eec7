//! Everything a command prints on standard output goes through [`write`] (via `outln!`/`out!`):
//! a reader that went away (`godwit status --json | head -1`) ends the command quietly with
//! [`Error::OutputClosed`] instead of the panic `println!` gives. A command that changes
//! things (`drop`, `reload`) calls [`finish_when_closed`] first: its work must not stop halfway
//! because nobody reads what it says, so from the closed pipe on its output is dropped silently.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;

/// Like `println!`, returning `Result<(), Error>`: `outln!("{x}")?`.
macro_rules! outln {
    () => {
        $crate::cli::output::write(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Like `print!` (flushed at once, for a prompt), returning `Result<(), Error>`.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::cli::output::write(format_args!($($arg)*))
    };
}

/// Set by a command that must finish its work even when stdout is closed.
static FINISH_WHEN_CLOSED: AtomicBool = AtomicBool::new(false);
/// Set once a write found stdout closed.
static CLOSED: AtomicBool = AtomicBool::new(false);

/// Makes a closed stdout no reason to stop: the command's later output is dropped and it
/// goes on (still exit 0 when it succeeds). For commands that change things.
pub fn finish_when_closed() {
    FINISH_WHEN_CLOSED.store(true, Ordering::Relaxed);
}

/// Writes `text` to standard output and flushes it. A closed pipe is
/// [`Error::OutputClosed`] (a quiet end, exit 0), or nothing after [`finish_when_closed`];
/// any other failure is a runtime error.
pub fn write(text: fmt::Arguments<'_>) -> Result<(), Error> {
    let finish = FINISH_WHEN_CLOSED.load(Ordering::Relaxed);
    if finish && CLOSED.load(Ordering::Relaxed) {
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(text).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::BrokenPipe => {
            CLOSED.store(true, Ordering::Relaxed);
            if finish {
                Ok(())
            } else {
                Err(Error::OutputClosed)
            }
        }
        Err(e) => Err(Error::Runtime(format!(
            "cannot write to standard output: {e}"
        ))),
    }
}
