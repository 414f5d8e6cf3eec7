//! The `godwit` binary: parse the command line, set up logging, call the library, map
//! errors to exit codes (SPEC §2).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use godwit::cli;
use godwit::task::progress::LogWriter;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "godwit",
    version,
    about = "PostgreSQL to S3 and Redis, the way AWS DMS does it"
)]
struct Args {
    /// Log format: human-readable on a terminal, JSON lines otherwise (auto).
    #[arg(long, value_enum, default_value = "auto", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline per its mode.
    Run {
        /// Pipeline file (a path).
        pipeline: String,
        /// Batch run: the full load where due, then CDC up to the WAL position read when it
        /// starts; confirm it to the slot and exit.
        #[arg(long)]
        once: bool,
        /// Stop cleanly after this long (e.g. 10m).
        #[arg(long)]
        max_duration: Option<String>,
        /// Test crash point: abort right after the N-th completed object.
        #[arg(long, hide = true)]
        crash_after_objects: Option<u64>,
        /// Test failure point: the N-th object fails to complete (an I/O error).
        #[arg(long, hide = true)]
        fail_object: Option<u64>,
        /// Test knob: the S3 lease's time to live (e.g. 6s; renewed every quarter of it).
        #[arg(long, hide = true)]
        lease_ttl: Option<String>,
    },
    /// Validate the file and every prerequisite without moving data.
    Check {
        pipeline: String,
        /// Machine-readable report.
        #[arg(long)]
        json: bool,
    },
    /// Task state and per-table statistics.
    Status {
        pipeline: String,
        #[arg(long)]
        json: bool,
    },
    /// What landed in the target: objects, rows, schema, sample rows.
    Inspect {
        pipeline: String,
        /// Only this table (schema.table).
        #[arg(long)]
        table: Option<String>,
        /// Sample rows per table.
        #[arg(long, default_value_t = 5)]
        rows: usize,
    },
    /// Queue a fresh full load of one table.
    Reload {
        pipeline: String,
        #[arg(long)]
        table: String,
    },
    /// Remove the slot, publication and state godwit created for this pipeline.
    Drop {
        pipeline: String,
        #[arg(long)]
        yes: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = std::env::var("GODWIT_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let terminal = std::io::stderr().is_terminal();
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !terminal,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter);
    if json {
        builder.json().with_current_span(false).init();
    } else {
        builder.with_ansi(terminal).with_target(false).init();
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match args.command {
            Command::Run {
                pipeline,
                once,
                max_duration,
                crash_after_objects,
                fail_object,
                lease_ttl,
            } => {
                godwit::faults::crash_after_objects(crash_after_objects.unwrap_or(0));
                godwit::faults::fail_object(fail_object.unwrap_or(0));
                match lease_ttl.as_deref().map(godwit::config::parse_duration) {
                    None => {}
                    Some(Ok(d)) => godwit::state::s3::set_lease_ttl(d),
                    Some(Err(e)) => {
                        eprintln!("error: --lease-ttl: {e}");
                        return Ok(2);
                    }
                }
                let max_duration = match max_duration.as_deref().map(godwit::config::parse_duration)
                {
                    None => None,
                    Some(Ok(d)) => Some(d),
                    Some(Err(e)) => {
                        eprintln!("error: --max-duration: {e}");
                        return Ok(2);
                    }
                };
                cli::run::execute(&pipeline, once, max_duration).await
            }
            Command::Check { pipeline, json } => cli::check::execute(&pipeline, json).await,
            Command::Status { pipeline, json } => cli::status::execute(&pipeline, json).await,
            Command::Inspect {
                pipeline,
                table,
                rows,
            } => cli::inspect::execute(&pipeline, table.as_deref(), rows).await,
            Command::Drop { pipeline, yes } => cli::drop::execute(&pipeline, yes).await,
            Command::Reload { pipeline, table } => cli::reload::execute(&pipeline, &table).await,
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
