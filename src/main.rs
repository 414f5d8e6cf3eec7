//! The `godwit` binary: parse the command line, set up logging, call the library, map
//! errors to exit codes (SPEC §2).

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use godwit::task::progress::LogWriter;
use godwit::{Error, cli};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "godwit",
    version,
    about = "PostgreSQL to S3 and Redis, the way AWS DMS does it",
    after_help = "Example:\n  godwit check pipelines/quickstart.toml && godwit run pipelines/quickstart.toml"
)]
struct Args {
    /// Log format on stderr: human-readable lines on a terminal, JSON lines otherwise (auto).
    #[arg(
        long,
        value_enum,
        value_name = "FORMAT",
        default_value = "auto",
        global = true
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Pretty on a terminal, JSON lines otherwise.
    Auto,
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Pretty,
}

#[derive(Clone, Copy, ValueEnum)]
enum SqlDialect {
    /// CREATE VIEW statements over read_parquet/read_csv (local folders, or S3 with httpfs).
    Duckdb,
    /// CREATE EXTERNAL TABLE and CREATE VIEW statements for Amazon Athena (S3 targets).
    Athena,
}

/// The pipeline file every subcommand takes.
#[derive(clap::Args)]
struct PipelineArg {
    /// Pipeline file: a local path, or an s3://bucket/key URL (read with the standard AWS
    /// credential chain; AWS_ENDPOINT_URL for S3-compatible stores).
    #[arg(value_name = "PIPELINE")]
    pipeline: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline per its mode (full-load, cdc or full-load-and-cdc).
    #[command(
        after_help = "Examples:\n  godwit run pipelines/quickstart.toml\n  godwit run pipelines/quickstart.toml --once\n  godwit run s3://my-bucket/pipelines/orders.toml --max-duration 10m"
    )]
    Run {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// Batch run: the full load where due, then CDC up to the WAL position read when it
        /// starts; confirm it to the slot and exit.
        #[arg(long)]
        once: bool,
        /// Stop cleanly after this long (e.g. 90s, 10m, 2h), whatever the run is doing: the
        /// full load starts no new table or segment (the next run goes on), CDC writes and
        /// confirms what it read first.
        #[arg(long, value_name = "DURATION")]
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
        /// Load this share of a full load split among N processes (1-based I/N, e.g. 2/3):
        /// shard 1 exports the snapshot, waits for the others and completes the tables;
        /// every shard shares the pipeline's state (see README, Deploy).
        #[arg(long, value_name = "I/N")]
        shard: Option<String>,
        /// Test knob: how often the progress line is logged (default 30s).
        #[arg(long, hide = true)]
        progress_every: Option<String>,
    },
    /// Validate the file and every prerequisite (source, tables, types, CDC settings, target,
    /// lease) without moving data; exit 2 when a check fails.
    #[command(
        after_help = "Examples:\n  godwit check pipelines/quickstart.toml\n  godwit check pipelines/quickstart.toml --json | jq .ok"
    )]
    Check {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// Print the report as one JSON document (checks, tables, columns, "ok") instead of
        /// text.
        #[arg(long)]
        json: bool,
    },
    /// Task state and per-table statistics (rows, bytes, files, changes, errors, marks).
    #[command(
        after_help = "Examples:\n  godwit status pipelines/quickstart.toml\n  godwit status pipelines/quickstart.toml --json | jq '.tables'"
    )]
    Status {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// Print the stored state record as JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// What landed in the target: full-load and CDC files apart, with rows, schema and sample
    /// rows read back from the files; or, with --sql, views that read them.
    #[command(
        after_help = "Examples:\n  godwit inspect pipelines/quickstart.toml\n  godwit inspect pipelines/quickstart.toml --table shop.orders --rows 20\n  godwit inspect pipelines/quickstart.toml --sql duckdb | duckdb lake.db"
    )]
    Inspect {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// Show only this table (schema.table).
        #[arg(long, value_name = "SCHEMA.TABLE")]
        table: Option<String>,
        /// Sample rows to show per table, of its full load and of its CDC files.
        #[arg(long, value_name = "N", default_value_t = 5)]
        rows: usize,
        /// Print SQL instead: per table a view of its current state (full load with the
        /// changes applied) and a <table>_history view of every row of its files.
        #[arg(long, value_enum, value_name = "DIALECT")]
        sql: Option<SqlDialect>,
    },
    /// Queue a fresh full load of one table (after a table error, or to start its copy over).
    #[command(
        after_help = "Example:\n  godwit reload pipelines/quickstart.toml --table shop.orders"
    )]
    Reload {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// The table to load again (schema.table); it must be one the pipeline selects.
        #[arg(long, value_name = "SCHEMA.TABLE")]
        table: String,
    },
    /// Ask a running `godwit run` for its /healthz ([metrics] listen): exit 0 when it answers
    /// 200, 1 otherwise, printing why (for container health checks).
    #[command(
        after_help = "Examples:\n  godwit health pipelines/quickstart.toml\n  godwit health --url http://127.0.0.1:9187/healthz"
    )]
    Health {
        /// Pipeline file whose [metrics] listen address is asked (an unspecified address such
        /// as 0.0.0.0 is asked on the loopback). Without it, --url is asked.
        #[arg(value_name = "PIPELINE")]
        pipeline: Option<String>,
        /// The health URL to ask when no PIPELINE is given [default:
        /// http://127.0.0.1:9187/healthz].
        #[arg(long, value_name = "URL", conflicts_with = "pipeline")]
        url: Option<String>,
        /// Give up (exit 1) when no answer came within this long.
        #[arg(long, value_name = "DURATION", default_value = "5s")]
        timeout: String,
    },
    /// Remove the slot, publications and state godwit created for this pipeline.
    #[command(after_help = "Example:\n  godwit drop pipelines/quickstart.toml --yes")]
    Drop {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// Drop without asking (needed when stdin is not a terminal).
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
        builder
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(godwit::notify::log_format::JsonLines)
            .init();
    } else {
        builder.with_ansi(terminal).with_target(false).init();
    }
}

/// glibc gives each thread that allocates its own malloc arena (up to 8 per core), and memory
/// freed in one arena is not reused by the others: under CDC that slack alone was 25 MiB above
/// the budget. One arena per core (at least two) keeps it small; set before any thread starts
/// (`MALLOC_ARENA_MAX` in the environment overrides it).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    // glibc's own setting, when given, is the user's choice.
    if std::env::var_os("MALLOC_ARENA_MAX").is_some() {
        return;
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    // SAFETY: mallopt only changes allocator settings; called once, before other threads.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, cores.max(2) as libc::c_int);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

fn main() -> ExitCode {
    limit_malloc_arenas();
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
                progress_every,
                shard,
            } => {
                let shard = match shard.as_deref().map(godwit::task::shard::Shard::parse) {
                    None => None,
                    Some(Ok(s)) => Some(s),
                    Some(Err(e)) => {
                        eprintln!("error: {e}");
                        return Ok(2);
                    }
                };
                match progress_every
                    .as_deref()
                    .map(godwit::config::parse_duration)
                {
                    None => {}
                    Some(Ok(d)) => godwit::notify::pulse::set_every(d),
                    Some(Err(e)) => {
                        eprintln!("error: --progress-every: {e}");
                        return Ok(2);
                    }
                }
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
                cli::run::execute(&pipeline.pipeline, once, max_duration, shard).await
            }
            Command::Check { pipeline, json } => {
                cli::check::execute(&pipeline.pipeline, json).await
            }
            Command::Status { pipeline, json } => {
                cli::status::execute(&pipeline.pipeline, json).await
            }
            Command::Inspect {
                pipeline,
                table,
                rows,
                sql,
            } => {
                let sql = sql.map(|d| match d {
                    SqlDialect::Duckdb => cli::lake_sql::Dialect::Duckdb,
                    SqlDialect::Athena => cli::lake_sql::Dialect::Athena,
                });
                cli::inspect::execute(&pipeline.pipeline, table.as_deref(), rows, sql).await
            }
            Command::Health {
                pipeline,
                url,
                timeout,
            } => match godwit::config::parse_duration(&timeout) {
                Ok(t) => cli::health::execute(pipeline.as_deref(), url.as_deref(), t).await,
                Err(e) => {
                    eprintln!("error: --timeout: {e}");
                    Ok(2)
                }
            },
            Command::Drop { pipeline, yes } => cli::drop::execute(&pipeline.pipeline, yes).await,
            Command::Reload { pipeline, table } => {
                cli::reload::execute(&pipeline.pipeline, &table).await
            }
        }
    });
    match result {
        Ok(code) => ExitCode::from(code as u8),
        // The reader of stdout went away (`| head -1`): a quiet end, like `ls | head`.
        Err(Error::OutputClosed) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
