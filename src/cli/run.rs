//! `godwit run PIPELINE`: runs the pipeline per its mode.

use std::io::IsTerminal;

use crate::config::Mode;
use crate::error::Error;
use crate::task::full_load::{self, RunOptions};

/// Runs the pipeline; returns 0, or 3 when a table ended in `Table error`.
pub async fn execute(path: &str) -> Result<i32, Error> {
    let p = super::load_pipeline(path).await?;
    let opts = RunOptions {
        progress: std::io::stderr().is_terminal(),
    };
    match p.mode {
        Mode::FullLoad => {
            let summary = full_load::run(&p, opts).await?;
            Ok(if summary.tables_in_error > 0 { 3 } else { 0 })
        }
        // `config::unsupported` refuses these before anything else happens.
        Mode::Cdc | Mode::FullLoadAndCdc => {
            crate::config::unsupported(&p)?;
            Err(Error::Startup(format!(
                "mode {} is not supported yet",
                p.mode
            )))
        }
    }
}
