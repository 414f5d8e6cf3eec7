//! Shared test helpers: the private services started by `scripts/services.sh` (run the tests
//! through `scripts/test`), a fresh database per test, running the real `godwit` binary, and
//! reading back what it wrote.
#![allow(dead_code)]

pub mod http;
pub mod redis;
pub mod replay;
pub mod s3;
pub mod source;
pub mod type_cases;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tokio_postgres::{Client, NoTls};

/// Connection facts of the test PostgreSQL.
#[derive(Clone)]
pub struct Pg {
    pub host: String,
    pub port: String,
    pub user: String,
    pub password: String,
}

pub fn pg() -> Pg {
    let get = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!("{k} is not set: run the tests through scripts/test, which starts the services")
        })
    };
    Pg {
        host: get("GODWIT_PG_HOST"),
        port: get("GODWIT_PG_PORT"),
        user: get("GODWIT_PG_USER"),
        password: get("GODWIT_PG_PASSWORD"),
    }
}

impl Pg {
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{db}?sslmode=disable",
            self.user, self.password, self.host, self.port
        )
    }

    pub async fn connect(&self, db: &str) -> Client {
        let (client, conn) = tokio_postgres::connect(&self.url(db), NoTls)
            .await
            .expect("connect to the test PostgreSQL");
        tokio::spawn(conn);
        client
            .batch_execute("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET IntervalStyle = 'iso_8601'; SET DateStyle = 'ISO'")
            .await
            .unwrap();
        client
    }

    /// A new, empty database (dropped first if a previous run left it).
    pub async fn fresh_db(&self, name: &str) -> Client {
        let admin = self.connect("postgres").await;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await
            .unwrap();
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        self.connect(name).await
    }
}

/// A scratch folder for one test's pipeline file and output.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new() -> Work {
        Work {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn out(&self) -> PathBuf {
        self.path().join("out")
    }

    /// Writes `pipeline.toml`; `{out}` in the text becomes the output folder.
    pub fn pipeline(&self, text: &str) -> PathBuf {
        let path = self.path().join("pipeline.toml");
        let text = text.replace("{out}", &self.out().display().to_string());
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs the godwit binary in this folder.
    pub fn godwit(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_godwit"));
        cmd.current_dir(self.path())
            .args(args)
            .env("GODWIT_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("run godwit")
    }
}

impl Work {
    /// Starts `godwit run PIPELINE` in the background (output discarded).
    pub fn spawn_run(&self, pipeline: &Path) -> std::process::Child {
        Command::new(env!("CARGO_BIN_EXE_godwit"))
            .current_dir(self.path())
            .arg("run")
            .arg(pipeline)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start godwit")
    }
}

impl Work {
    /// Starts `godwit run PIPELINE` in the background with godwit's debug log (stdout and
    /// stderr) going to `log`.
    pub fn spawn_run_logged(&self, pipeline: &Path, log: &Path) -> std::process::Child {
        let out = std::fs::File::create(log).unwrap();
        Command::new(env!("CARGO_BIN_EXE_godwit"))
            .current_dir(self.path())
            .arg("run")
            .arg(pipeline)
            .env("GODWIT_LOG", "info,godwit=debug")
            .stdout(std::process::Stdio::from(out.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(out))
            .spawn()
            .expect("start godwit")
    }
}

/// How many lines of the file at `log` contain `needle`.
pub fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// The WAL insert position now: every transaction committed so far ends at or before it (the
/// write position, `pg_current_wal_lsn()`, can lag behind commits made with
/// `synchronous_commit = off`).
pub async fn lsn_now(db: &Client) -> i64 {
    db.query_one(
        "SELECT (pg_current_wal_insert_lsn() - '0/0'::pg_lsn)::int8",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Waits until the WAL is flushed to disk past every commit made so far, so a logical slot
/// (which shows only flushed WAL) holds them all; the private cluster commits asynchronously.
pub async fn wait_wal_flushed(db: &Client) {
    let target = lsn_now(db).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let flushed: i64 = db
            .query_one(
                "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::int8",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if flushed >= target {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the WAL was not flushed past {target} within 30 s (flushed {flushed})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The slot's `confirmed_flush_lsn` (0 while it has none or does not exist).
pub async fn slot_lsn(db: &Client, slot: &str) -> i64 {
    db.query_opt(
        "SELECT COALESCE((confirmed_flush_lsn - '0/0'::pg_lsn)::int8, 0) FROM pg_replication_slots WHERE slot_name = $1",
        &[&slot],
    )
    .await
    .ok()
    .flatten()
    .map(|r| r.get(0))
    .unwrap_or(0)
}

/// stdout + stderr, for assertions and failure messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts a successful run and returns its output text.
pub fn assert_ok(o: &Output) -> String {
    let t = text(o);
    assert_eq!(o.status.code(), Some(0), "godwit failed:\n{t}");
    t
}

/// Every Parquet file under `dir`, relative names sorted.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(d) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if p.extension().is_some_and(|x| x == "parquet") {
                    out.push(p);
                }
            }
        }
    }
    walk(dir, &mut out);
    out.sort();
    out
}

/// All batches of one Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// The Arrow schema stored in a Parquet file (also for files without rows).
pub fn parquet_schema(path: &Path) -> arrow::datatypes::SchemaRef {
    let file = std::fs::File::open(path).unwrap();
    ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .schema()
        .clone()
}

/// All batches of a table's full load (`<out>/<schema>/<table>/LOAD*.parquet`).
pub fn read_table(out: &Path, schema: &str, table: &str) -> Vec<RecordBatch> {
    let dir = out.join(schema).join(table);
    let files: Vec<_> = parquet_files(&dir)
        .into_iter()
        .filter(|p| p.parent() == Some(dir.as_path()))
        .collect();
    assert!(!files.is_empty(), "no Parquet files in {}", dir.display());
    files.iter().flat_map(|f| read_parquet(f)).collect()
}

/// Total rows of some batches.
pub fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// The events file's lines as JSON.
pub fn events(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A child process killed (and waited for) however the test ends: a run left behind would hold
/// its database's slot.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
