//! The subcommands of SPEC §2, one file each. Each returns the process exit code or an
//! [`Error`](crate::Error) that `main` maps to one.

#[macro_use]
pub(crate) mod output;

pub mod check;
pub mod drop;
pub mod health;
pub mod inspect;
pub mod lake_sql;
pub mod reload;
pub mod run;
pub mod status;

use std::path::Path;

use crate::config::{self, Pipeline};
use crate::error::Error;
use crate::sink::files::{s3, s3_error};

/// Reads and validates the pipeline file named on the command line: a local path, or an
/// `s3://bucket/key` URL read with the standard AWS credential chain (and `AWS_ENDPOINT_URL`
/// for S3-compatible stores).
pub async fn load_pipeline(path: &str) -> Result<Pipeline, Error> {
    let p = read_pipeline(path).await?;
    // Every log line from here on names the pipeline.
    crate::notify::log_format::set_pipeline(&p.name);
    Ok(p)
}

async fn read_pipeline(path: &str) -> Result<Pipeline, Error> {
    if !path.starts_with("s3://") {
        return Ok(config::load(Path::new(path))?);
    }
    let text = read_pipeline_text(path).await?;
    Ok(config::parse(&text, path)?)
}

/// The text of the pipeline file at `path` (a local path, or an `s3://bucket/key` URL).
pub async fn read_pipeline_text(path: &str) -> Result<String, Error> {
    let Some(rest) = path.strip_prefix("s3://") else {
        return std::fs::read_to_string(path).map_err(|e| {
            Error::Config(
                config::ConfigError::new(
                    path.to_string(),
                    format!("cannot read the pipeline file: {e}"),
                )
                .with_hint("pass the path of a pipeline .toml file"),
            )
        });
    };
    let Some((bucket, key)) = rest
        .split_once('/')
        .filter(|(b, k)| !b.is_empty() && !k.is_empty())
    else {
        return Err(Error::Startup(format!(
            "{path}: write the pipeline URL as s3://bucket/path/to/pipeline.toml"
        )));
    };
    let client = s3::client(None).await;
    let object = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .map_err(|e| {
            let place = s3_error::Place::new(
                &client,
                bucket,
                "the pipeline URL",
                None,
                "AWS_ENDPOINT_URL",
            );
            let call = s3_error::Call {
                doing: "reading the pipeline file",
                action: "s3:GetObject",
                key,
            };
            Error::Startup(s3_error::describe(&place, call, &e))
        })?;
    let bytes = object
        .body
        .collect()
        .await
        .map_err(|e| Error::Startup(format!("{path}: cannot read the pipeline file: {e}")))?
        .into_bytes();
    String::from_utf8(bytes.to_vec())
        .map_err(|_| Error::Startup(format!("{path}: the pipeline file is not UTF-8 text")))
}
