//! Events to an SNS topic, in the background: the data path hands an event over and goes on.
//! A task batches what is waiting (`PublishBatch`, 10 entries a call), retries what failed with
//! back-off (1 s doubling to 30 s), and at the end of the run gets a bounded time to deliver the
//! rest; what it could not deliver is reported (count and which events), never dropped silently.
//!
//! Each message is the event's JSON with the attributes `event_type`, `severity`, `pipeline` and,
//! for table events, `table` (SNS refuses an empty attribute), so that subscriptions can filter.

use std::time::Duration;

use aws_sdk_sns::Client;
use aws_sdk_sns::types::{MessageAttributeValue, PublishBatchRequestEntry};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Event;

/// Most entries SNS takes in one `PublishBatch`.
const BATCH: usize = 10;
/// How long a first event waits for others to join its batch.
const GATHER: Duration = Duration::from_millis(20);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(30);
/// Longest one `PublishBatch` may take: an endpoint that accepts the connection and never
/// answers (a stopped process, a black hole) is an error to retry, not a wait forever.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// What the publisher could not deliver by the end of the run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Undelivered {
    pub count: u64,
    /// `event_type@time` of each (the first 20), for the log and `status`.
    pub events: Vec<String>,
    /// The last error SNS gave.
    pub last_error: Option<String>,
}

/// Hands events to the background task.
pub struct SnsPublisher {
    tx: mpsc::UnboundedSender<Event>,
    task: JoinHandle<Undelivered>,
    stop: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
}

/// The region of a topic ARN (`arn:aws:sns:<region>:<account>:<name>`).
pub fn region_of(arn: &str) -> Option<&str> {
    let mut parts = arn.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("arn"), Some(_), Some("sns"), Some(region)) if !region.is_empty() => Some(region),
        _ => None,
    }
}

/// An SNS client from the standard AWS credential chain (`AWS_ENDPOINT_URL` for an emulator), in
/// the topic's region.
pub async fn client(topic_arn: &str) -> Client {
    use aws_smithy_http_client::{Builder, tls};
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .load()
        .await;
    let mut builder = aws_sdk_sns::config::Builder::from(&conf);
    if let Some(region) = region_of(topic_arn) {
        builder = builder.region(aws_sdk_sns::config::Region::new(region.to_string()));
    } else if conf.region().is_none() {
        builder = builder.region(aws_sdk_sns::config::Region::new("us-east-1"));
    }
    Client::from_conf(builder.build())
}

/// An AWS error as one line: the service's code and message where there is one.
pub fn describe<E, R>(e: &aws_sdk_sns::error::SdkError<E, R>) -> String
where
    E: aws_sdk_sns::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_sns::error::SdkError;
    match e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            format!(
                "{}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("no message")
            )
        }
        SdkError::DispatchFailure(d) => format!("cannot reach SNS: {d:?}"),
        SdkError::TimeoutError(_) => "SNS did not answer in time".into(),
        other => other.to_string(),
    }
}

/// What `godwit check` says of the topic: it exists and can be read (`GetTopicAttributes`, which
/// the deployment's policy grants beside `Publish`).
pub async fn check_topic(arn: &str) -> (&'static str, String) {
    let client = client(arn).await;
    match client.get_topic_attributes().topic_arn(arn).send().await {
        Ok(out) => {
            let subs = out
                .attributes()
                .and_then(|a| a.get("SubscriptionsConfirmed"))
                .map(|n| format!(", {n} confirmed subscriptions"))
                .unwrap_or_default();
            ("ok", format!("topic {arn} exists{subs}"))
        }
        Err(e) => (
            "error",
            format!(
                "topic {arn}: {}; create the topic, or grant sns:GetTopicAttributes and sns:Publish on it",
                describe(&e)
            ),
        ),
    }
}

impl SnsPublisher {
    pub fn start(client: Client, topic_arn: String) -> SnsPublisher {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(run(client, topic_arn, rx, stop_rx));
        SnsPublisher { tx, task, stop }
    }

    /// Queues one event (never waits).
    pub fn publish(&self, event: &Event) {
        if self.tx.send(event.clone()).is_ok() {
            super::metrics::sns_queued();
        }
    }

    /// Delivers what is queued, for at most `within`; returns what could not be delivered.
    pub async fn finish(self, within: Duration) -> Undelivered {
        let _ = self.stop.send(Some(tokio::time::Instant::now() + within));
        drop(self.tx);
        self.task.await.unwrap_or_else(|e| Undelivered {
            count: 0,
            events: Vec::new(),
            last_error: Some(format!("the SNS publisher crashed: {e}")),
        })
    }
}

fn entry(id: usize, e: &Event) -> PublishBatchRequestEntry {
    let attr = |v: &str| {
        MessageAttributeValue::builder()
            .data_type("String")
            .string_value(v)
            .build()
            .expect("data type is set")
    };
    let mut b = PublishBatchRequestEntry::builder()
        .id(format!("e{id}"))
        .message(serde_json::to_string(e).unwrap_or_default())
        .message_attributes("event_type", attr(e.event_type))
        .message_attributes("severity", attr(e.severity.as_str()))
        .message_attributes("pipeline", attr(&e.pipeline));
    if let Some(t) = e.table.as_deref().filter(|t| !t.is_empty()) {
        b = b.message_attributes("table", attr(t));
    }
    b.build().expect("id and message are set")
}

async fn run(
    client: Client,
    topic: String,
    mut rx: mpsc::UnboundedReceiver<Event>,
    stop: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
) -> Undelivered {
    let mut pending: Vec<Event> = Vec::new();
    let mut open = true;
    let mut delay = FIRST_RETRY;
    let mut last_error = None;
    loop {
        let deadline = *stop.borrow();
        if pending.is_empty() {
            if !open {
                break;
            }
            match rx.recv().await {
                Some(e) => pending.push(e),
                None => open = false,
            }
            // Let a burst gather into one call.
            tokio::time::sleep(GATHER).await;
        }
        while pending.len() < BATCH * 10 {
            match rx.try_recv() {
                Ok(e) => pending.push(e),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if pending.is_empty() {
            continue;
        }
        let n = pending.len().min(BATCH);
        let entries: Vec<_> = pending[..n]
            .iter()
            .enumerate()
            .map(|(i, e)| entry(i, e))
            .collect();
        let call = client
            .publish_batch()
            .topic_arn(&topic)
            .set_publish_batch_request_entries(Some(entries))
            .send();
        // The call ends at its own timeout, or at the end of the run's grace period: a call
        // in flight then is cut off, and what it carried counts as undelivered.
        let mut ending = stop.clone();
        let sent = tokio::select! {
            sent = tokio::time::timeout(CALL_TIMEOUT, call) => sent,
            () = grace_over(&mut ending) => {
                last_error =
                    Some("SNS did not answer before the end of the run's grace period".into());
                break;
            }
        };
        let failed: Vec<usize> = match sent {
            Err(_) => {
                last_error = Some(format!(
                    "SNS did not answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ));
                (0..n).collect()
            }
            Ok(Ok(out)) => {
                let failed: Vec<usize> = out
                    .failed()
                    .iter()
                    .filter_map(|f| f.id().strip_prefix('e')?.parse().ok())
                    .collect();
                if let Some(f) = out.failed().first() {
                    last_error = Some(format!(
                        "{}: {}",
                        f.code(),
                        f.message().unwrap_or("no message")
                    ));
                }
                failed
            }
            Ok(Err(e)) => {
                last_error = Some(describe(&e));
                (0..n).collect()
            }
        };
        // Delivered entries leave the queue; failed ones stay, in order, for the next attempt.
        super::metrics::sns_delivered(n.saturating_sub(failed.len()) as u64);
        let batch: Vec<Event> = pending.drain(..n).collect();
        let retry: Vec<Event> = batch
            .into_iter()
            .enumerate()
            .filter(|(i, _)| failed.contains(i))
            .map(|(_, e)| e)
            .collect();
        if retry.is_empty() {
            delay = FIRST_RETRY;
            continue;
        }
        pending.splice(0..0, retry);
        let wait = delay;
        delay = (delay * 2).min(LAST_RETRY);
        tracing::warn!(
            undelivered = pending.len(),
            retry_in_ms = wait.as_millis() as u64,
            error = last_error.as_deref().unwrap_or(""),
            "SNS did not take events; retrying"
        );
        // Past the end-of-run deadline nothing more is tried; the end of the run cuts a wait short.
        let now = tokio::time::Instant::now();
        match deadline {
            Some(d) if now + wait >= d => break,
            Some(_) => tokio::time::sleep(wait).await,
            None => {
                let mut ending = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = ending.changed() => {}
                }
            }
        }
    }
    // Whatever is still queued (also events that arrived after the deadline, and those of a
    // call the deadline cut off) is undelivered.
    while let Ok(e) = rx.try_recv() {
        pending.push(e);
    }
    Undelivered {
        count: pending.len() as u64,
        events: pending
            .iter()
            .take(20)
            .map(|e| format!("{}@{}", e.event_type, e.time))
            .collect(),
        last_error: if pending.is_empty() { None } else { last_error },
    }
}

/// Resolves once the end of the run's grace period has passed (never before the run ends).
async fn grace_over(stop: &mut tokio::sync::watch::Receiver<Option<tokio::time::Instant>>) {
    loop {
        let deadline = *stop.borrow_and_update();
        match deadline {
            Some(d) => return tokio::time::sleep_until(d).await,
            None => {
                if stop.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::region_of;

    #[test]
    fn the_region_comes_from_the_topic_arn() {
        assert_eq!(
            region_of("arn:aws:sns:eu-west-1:123456789012:events"),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of("arn:aws-cn:sns:cn-north-1:1:t"),
            Some("cn-north-1")
        );
        assert_eq!(region_of("events"), None);
        assert_eq!(region_of("arn:aws:sqs:eu-west-1:1:q"), None);
    }
}
