#![recursion_limit = "256"]
//! The AWS Lambda function (custom runtime `provided.al2023`: the executable is `bootstrap`).
//! Each invocation is one batch run of the pipeline the event names (see `godwit::lambda`).
//! Build: `cargo lambda build --release --features lambda` (see README: Serverless).

use godwit::task::progress::LogWriter;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    // JSON lines (CloudWatch metric filters read them; see README: logs).
    let filter = std::env::var("GODWIT_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
        .event_format(godwit::notify::log_format::JsonLines)
        .init();
    godwit::lambda::serve().await
}
