//! Everything a command prints on standard output goes through [`write`] (via `outln!`/`out!`):
//! a reader that went away (`godwit status --json | head -1`) ends the command quietly with
//! [`Error::OutputClosed`] instead of the panic `println!` gives.

use std::fmt;
use std::io::{ErrorKind, Write};

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

/// Writes `text` to standard output and flushes it. A closed pipe is
/// [`Error::OutputClosed`] (a quiet end, exit 0); any other failure is a runtime error.
pub fn write(text: fmt::Arguments<'_>) -> Result<(), Error> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_fmt(text)
        .and_then(|()| stdout.flush())
        .map_err(|e| match e.kind() {
            ErrorKind::BrokenPipe => Error::OutputClosed,
            _ => Error::Runtime(format!("cannot write to standard output: {e}")),
        })
}
