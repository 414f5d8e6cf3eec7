//! Orchestration: start-up checks that fail fast (exit 2), the table state machine, the
//! full-load scheduler and the error policies.

pub mod cdc;
pub mod full_load;
pub(crate) mod partitions;
pub mod plan;
pub mod progress;
pub mod reload;
pub mod run_context;
pub mod shard;

use crate::sink::redis::writer::CacheTarget;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use crate::config::{Pipeline, Sse, StateUrl, TargetUrl};
use crate::error::Error;
use crate::notify::Notifier;
use crate::pg::Snapshot;
use crate::pg::catalog;
use crate::pg::connect::Source;
use crate::pg::filter::Filter;
use crate::sink::files::fenced::FencedStore;
use crate::sink::files::local::LocalStore;
use crate::sink::files::s3::{Encryption, S3Settings, S3Store};
use crate::sink::files::{ObjectStore, layout};
use crate::state::local::LocalState;
use crate::state::s3::S3State;
use crate::state::{Lease, StateStore, TaskRecord};
use plan::TablePlan;

/// The source, opened and inside the load's snapshot, with every selected table planned.
pub struct Discovered {
    pub source: Source,
    pub snapshot: Snapshot,
    pub server_version: String,
    pub plans: Vec<TablePlan>,
}

/// The pipeline's source and one ordinary connection to it (a bad URL is exit 2 naming
/// `source.url`; an unreachable server a start-up failure).
pub async fn connect_source(p: &Pipeline) -> Result<(Source, tokio_postgres::Client), Error> {
    let source = Source::from_url(p.source.url.expose())
        .map_err(|e| Error::Config(p.error_at("source.url", e.to_string())))?;
    let client = source
        .connect()
        .await
        .map_err(|e| Error::Startup(e.to_string()))?;
    Ok((source, client))
}

/// Connects, exports a snapshot and plans every selected table. Every failure here is a
/// start-up failure: exit 2, nothing written.
pub async fn discover(p: &Pipeline) -> Result<Discovered, Error> {
    let (source, client) = connect_source(p).await?;
    let pg_err = |what: &str, e: tokio_postgres::Error| {
        Error::Startup(format!(
            "{what} on {}: {}",
            source.display,
            crate::pg::connect::describe_error(&e, &source.display)
        ))
    };
    let server_version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map(|r| r.get(0))
        .map_err(|e| pg_err("reading the server version", e))?;
    let snapshot = Snapshot::export(client)
        .await
        .map_err(|e| pg_err("exporting a snapshot", e))?;
    let types = catalog::load_types(snapshot.client())
        .await
        .map_err(|e| pg_err("reading pg_type", e))?;
    let tables = catalog::discover(snapshot.client(), &|s, t| p.tables.selects(s, t))
        .await
        .map_err(|e| pg_err("reading the catalog", e))?;
    if tables.is_empty() {
        let include: Vec<_> = p.tables.include.iter().map(|t| t.as_str()).collect();
        let exclude: Vec<_> = p.tables.exclude.iter().map(|t| t.as_str()).collect();
        return Err(Error::Config(
            p.error_at(
                "tables.include",
                format!(
                    "no table of {} matched include {include:?} minus exclude {exclude:?}",
                    source.display
                ),
            )
            .with_hint(
                "patterns are schema.table globs matched case-sensitively; list the tables with psql \\dt *.*",
            ),
        ));
    }
    let mut plans = Vec::with_capacity(tables.len());
    for table in tables {
        let name = table.name.clone();
        let settings_key = p
            .tables
            .settings_key(&name.schema, &name.name)
            .unwrap_or_else(|| "tables".into());
        let plan = plan::plan_table(p, table, &types).map_err(|msg| {
            Error::Config(p.error_at(&format!("{settings_key}.exclude_columns"), msg))
        })?;
        if let Some(w) = &plan.settings.where_clause {
            check_where(&snapshot, &plan, w).await.map_err(|msg| {
                Error::Config(
                    p.error_at(&format!("{settings_key}.where"), msg)
                        .with_hint(format!(
                            "the filter runs as SELECT … FROM {} WHERE (<filter>); try it in psql",
                            plan.table.name.quoted()
                        )),
                )
            })?;
        }
        plans.push(plan);
    }
    Ok(Discovered {
        source,
        snapshot,
        server_version,
        plans,
    })
}

/// What a run holds once start-up is over: the stores, the lease, the events, the previous
/// run's record and the discovered tables.
pub struct Started {
    pub store: Arc<dyn ObjectStore>,
    pub state: Arc<StateStore>,
    pub lease: Lease,
    pub notifier: Arc<Notifier>,
    pub previous: Option<TaskRecord>,
    pub discovered: Discovered,
    /// The cache (Redis) when the pipeline has a `[cache]`.
    pub cache: Option<Arc<CacheTarget>>,
}

/// How long the end of a run waits for SNS to take the events still queued.
pub const SNS_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Start-up shared by every mode: stores, discovery, the lease, clean-up of what an
/// interrupted run left, the previous record, the events file and the SNS publisher. Failures
/// before the lease are start-up failures (exit 2).
pub async fn start(p: &Pipeline) -> Result<Started, Error> {
    if let Some(w) = Source::from_url(p.source.url.expose())
        .ok()
        .and_then(|s| s.unverified_warning())
    {
        tracing::warn!("{w}");
    }
    let budget = crate::batch::budget::install(p.limits.memory);
    let store = target_store(p).await?;
    let state = state_store(p).await?;
    let discovered = discover(p).await?;
    let cache = match &p.cache {
        Some(c) => {
            let columns = discovered
                .plans
                .iter()
                .map(|pl| {
                    let cols = pl.copy.columns.iter();
                    (
                        pl.key(),
                        cols.map(|c| (c.name.clone(), c.ty.clone())).collect(),
                    )
                })
                .collect();
            Some(CacheTarget::connect(p, c, &columns).await?)
        }
        None => None,
    };
    let lease = state.acquire_lease(&p.name).await.map_err(|e| match e {
        // Kept as the source: a Lambda invocation answers "already running" with the holder.
        crate::state::StateError::LeaseHeld { .. } => {
            crate::error::Failure::new(crate::error::Kind::Startup, e.to_string())
                .source(e)
                .into()
        }
        e => Error::Startup(e.to_string()),
    })?;
    // Every write of the target holds only while the lease does.
    let store = FencedStore::wrap(store, lease.fence());
    let previous = match state.load().await {
        Ok(p) => p,
        Err(e) => {
            lease.release().await;
            return Err(Error::Runtime(e.to_string()));
        }
    };
    // Start-up is over: from here on godwit writes.
    let folders = table_folders(&discovered.plans, previous.as_ref());
    match store.cleanup_incomplete(&folders).await {
        Ok(0) => {}
        Ok(n) => tracing::info!("removed {n} incomplete objects an interrupted run left"),
        Err(e) => tracing::warn!("cannot clean up after an interrupted run: {e}"),
    }
    let notifier = match Notifier::open(&p.name, &p.notify.events_file) {
        Ok(n) => n,
        Err(e) => {
            lease.release().await;
            return Err(Error::Startup(format!(
                "cannot open the events file {}: {e}",
                p.notify.events_file.display()
            )));
        }
    };
    if let Some(arn) = &p.notify.sns_topic_arn {
        let client = crate::notify::sns::client(arn).await;
        notifier.publish_to(crate::notify::sns::SnsPublisher::start(client, arn.clone()));
    }
    let notifier = Arc::new(notifier);
    budget.notify_to(notifier.clone());
    // Spill files a crashed run left: their changes come again from the slot.
    let spill = crate::batch::spill::folder(&p.limits.spill_dir, &p.name);
    match crate::batch::spill::remove_leftovers(&spill) {
        0 => {}
        n => {
            tracing::info!(spill_dir = %spill.display(), "removed {n} spill files an interrupted run left")
        }
    }
    Ok(Started {
        store,
        state: Arc::new(state),
        lease,
        notifier,
        previous,
        discovered,
        cache,
    })
}

/// The table folders this pipeline may have left incomplete objects in: the selected
/// tables', those the previous run recorded files in (tables since deselected), and their
/// reload staging folders.
fn table_folders(plans: &[TablePlan], previous: Option<&TaskRecord>) -> Vec<String> {
    let mut folders: BTreeSet<String> = plans
        .iter()
        .map(|p| layout::table_prefix(&p.table.name))
        .collect();
    for t in previous.iter().flat_map(|r| r.tables.values()) {
        let files = t
            .files
            .iter()
            .chain(t.segments.iter().flat_map(|s| &s.files));
        folders.extend(files.filter_map(|f| layout::table_prefix_of(&f.key)));
    }
    // A reload writes beside the table's folder until it is switched in.
    let staged: Vec<String> = folders.iter().map(|f| reload::staged(f)).collect();
    folders.extend(staged);
    folders.into_iter().collect()
}

/// Runs the table's filter once on no rows, so a typo fails at start-up, not mid-load. The
/// probe goes through the extended protocol (one statement, never several) inside the
/// read-only snapshot, behind a savepoint.
async fn check_where(snapshot: &Snapshot, plan: &TablePlan, w: &Filter) -> Result<(), String> {
    let c = snapshot.client();
    c.batch_execute("SAVEPOINT godwit_where")
        .await
        .map_err(|e| e.to_string())?;
    let probe = format!(
        "SELECT 1 FROM {} WHERE ({w}) LIMIT 0",
        plan.table.name.quoted()
    );
    let result = c.query(probe.as_str(), &[]).await;
    c.batch_execute("ROLLBACK TO SAVEPOINT godwit_where")
        .await
        .map_err(|e| e.to_string())?;
    // No SELECT privilege is not the filter's fault: the table's load reports it as a table
    // error (with the GRANT to run), the other tables go on.
    if let Err(e) = &result
        && e.as_db_error().map(|d| d.code().code()) == Some("42501")
    {
        tracing::debug!(table = %plan.table.name, "the filter cannot be tried: no SELECT privilege");
        return Ok(());
    }
    result.map(|_| ()).map_err(|e| {
        let detail = e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string());
        format!(
            "the filter `{w}` does not work on {}: {detail}",
            plan.table.name
        )
    })
}

/// The S3 settings of the target section for `bucket`/`prefix`.
fn s3_settings(p: &Pipeline, bucket: &str, prefix: &str, bucket_setting: &str) -> S3Settings {
    let t = &p.target;
    S3Settings {
        bucket: bucket.to_string(),
        prefix: prefix.trim_matches('/').to_string(),
        endpoint: t.endpoint.clone(),
        encryption: match t.sse {
            Sse::None => Encryption::None,
            Sse::Aes256 => Encryption::Aes256,
            Sse::Kms => Encryption::Kms {
                key_id: t.kms_key_id.clone(),
            },
        },
        expected_bucket_owner: t.expected_bucket_owner.clone(),
        bucket_setting: bucket_setting.to_string(),
    }
}

/// Where the target writes: a local folder or an S3 prefix.
pub async fn target_store(p: &Pipeline) -> Result<Arc<dyn ObjectStore>, Error> {
    match &p.target.url {
        TargetUrl::File(dir) => Ok(Arc::new(LocalStore::new(dir.clone()))),
        TargetUrl::S3 { bucket, prefix } => {
            let settings = s3_settings(p, bucket, prefix, "target.url");
            Ok(Arc::new(S3Store::new(settings).await))
        }
        TargetUrl::None => Ok(Arc::new(crate::sink::files::none::NoStore)),
    }
}

/// The state store of the pipeline.
pub async fn state_store(p: &Pipeline) -> Result<StateStore, Error> {
    match &p.state.url {
        StateUrl::File(dir) => Ok(StateStore::Local(LocalState::new(PathBuf::from(dir)))),
        StateUrl::S3 { bucket, prefix } => {
            // The state shares the target's bucket unless state.url names another.
            let named_in = match &p.target.url {
                TargetUrl::S3 { bucket: b, .. } if b == bucket => "target.url",
                _ => "state.url",
            };
            let settings = s3_settings(p, bucket, prefix, named_in);
            Ok(StateStore::S3(S3State::new(S3Store::new(settings).await)))
        }
    }
}
