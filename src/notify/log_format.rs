//! The JSON log line (off a terminal, or `--log-format json`): one object per line,
//! `{"timestamp", "level", "target", "fields": {…}}`. `fields` holds the event's own fields,
//! plain values, plus those of the spans it happened in (`table`, `segment`) and the run's
//! `pipeline`. A `details` field written as a JSON object stays an object (an event's
//! details), so a CloudWatch metric filter can match `$.fields.details.rows`.

use std::fmt;
use std::sync::OnceLock;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

static PIPELINE: OnceLock<String> = OnceLock::new();

/// Names the pipeline every following log line is about (the first call wins).
pub fn set_pipeline(name: &str) {
    let _ = PIPELINE.set(name.to_string());
}

/// The formatter of JSON log lines (see the module docs). Spans must record their fields with
/// [`JsonFields`].
pub struct JsonLines;

struct Fields(Map<String, Value>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        let v = match field.name() {
            "details" => match serde_json::from_str::<Value>(value) {
                Ok(v @ Value::Object(_)) => v,
                _ => Value::String(value.to_string()),
            },
            _ => Value::String(value.to_string()),
        };
        self.0.insert(field.name().to_string(), v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_string(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0
            .insert(field.name().to_string(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_string(), format!("{value:?}").into());
    }
}

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields(Map::new());
        event.record(&mut fields);
        let mut fields = fields.0;
        // The spans' fields, innermost first; the event's own win.
        if let Some(scope) = ctx.event_scope() {
            for span in scope {
                let ext = span.extensions();
                let Some(recorded) = ext.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(recorded) {
                    for (k, v) in map {
                        fields.entry(k).or_insert(v);
                    }
                }
            }
        }
        if let Some(p) = PIPELINE.get() {
            fields
                .entry("pipeline".to_string())
                .or_insert_with(|| p.clone().into());
        }
        let meta = event.metadata();
        let line = serde_json::json!({
            "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "level": meta.level().as_str(),
            "fields": fields,
            "target": meta.target(),
        });
        writeln!(writer, "{line}")
    }
}
