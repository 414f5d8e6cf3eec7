//! `godwit reload PIPELINE --table schema.table`: queues a fresh full load of one table (after
//! a table error, or to start its copy over). The running CDC run picks it up within seconds,
//! otherwise the next run does: the table is loaded from a temporary slot's snapshot and CDC
//! skips its changes up to that slot's consistent point. In a `full-load` pipeline the next
//! run loads the requested tables (and those in `Table error`) and keeps the others.

use crate::config::Mode;
use crate::error::Error;
use crate::notify::{EventKind, Notifier};
use crate::task::state_store;

pub async fn execute(path: &str, table: &str) -> Result<i32, Error> {
    // Asked to change things: done even when nobody reads what it says (`| true`).
    super::output::finish_when_closed();
    let p = super::load_pipeline(path).await?;
    let selected = table
        .split_once('.')
        .is_some_and(|(schema, name)| p.tables.selects(schema, name));
    if !selected {
        return Err(Error::Startup(format!(
            "{table} is not a table this pipeline selects (tables.include/exclude of {}); write it as schema.table",
            p.file
        )));
    }
    let state = state_store(&p).await?;
    state
        .request_reload(table)
        .await
        .map_err(|e| Error::Runtime(e.to_string()))?;
    if let Ok(n) = Notifier::open(&p.name, &p.notify.events_file) {
        if let Some(arn) = &p.notify.sns_topic_arn {
            let client = crate::notify::sns::client(arn).await;
            n.publish_to(crate::notify::sns::SnsPublisher::start(client, arn.clone()));
        }
        n.emit(EventKind::TableReloadRequested {
            table: table.to_string(),
        });
        n.close(crate::task::SNS_GRACE).await;
    }
    if p.mode == Mode::FullLoad {
        outln!(
            "{table}: reload queued; the next run loads it again (and any table in Table error), keeping the tables the last run completed"
        )?;
    } else {
        outln!(
            "{table}: reload queued; a running CDC run starts it within seconds, otherwise the next run does"
        )?;
    }
    Ok(0)
}
