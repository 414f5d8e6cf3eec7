//! The subcommands of SPEC §2, one file each. Each returns the process exit code or an
//! [`Error`](crate::Error) that `main` maps to one.

pub mod check;
pub mod inspect;
pub mod run;
pub mod status;

use std::path::Path;

use crate::config::{self, Pipeline};
use crate::error::Error;

/// Reads and validates the pipeline file named on the command line.
pub fn load_pipeline(path: &str) -> Result<Pipeline, Error> {
    if path.starts_with("s3://") {
        return Err(Error::Startup(format!(
            "{path}: reading pipeline files from S3 is not supported yet by this godwit version; use a local path"
        )));
    }
    Ok(config::load(Path::new(path))?)
}
