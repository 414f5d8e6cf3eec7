//! godwit's top-level error: what failed, classified once into the exit codes of SPEC §2.

use crate::config::ConfigError;

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pipeline file is wrong (exit 2).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A failure before every endpoint answered once: unreachable host, authentication,
    /// no table matched, lease held (exit 2). Nothing was written.
    #[error("{0}")]
    Startup(String),
    /// A failure after start-up (exit 1).
    #[error("{0}")]
    Runtime(String),
    /// A failure after start-up that trying again can cure (a broken connection, a failed
    /// write): retried per `[errors] recoverable_retries`, exit 1 once they are spent.
    #[error("{0}")]
    Recoverable(String),
    /// Standard output was closed by its reader (`godwit status | head -1`): the command
    /// ends quietly, like `ls | head` (exit 0).
    #[error("standard output was closed")]
    OutputClosed,
}

impl Error {
    /// The process exit code for this error (SPEC §2).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Startup(_) => 2,
            Error::Runtime(_) | Error::Recoverable(_) => 1,
            Error::OutputClosed => 0,
        }
    }
}
