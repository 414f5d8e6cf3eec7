//! The one place an AWS SDK error becomes the sentence a user reads: what godwit was doing,
//! on which bucket and key, the service's code and message, and what to do about it — never
//! the SDK's debug dump (which carries headers and request ids nobody needs).

use std::io;

use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// Where a store's requests go, and which settings name it (for the advice).
#[derive(Debug, Clone)]
pub struct Place {
    pub bucket: String,
    /// The setting naming the bucket, e.g. `target.url`.
    pub bucket_setting: String,
    /// The endpoint as the user knows it, e.g. `http://127.0.0.1:9000` or `AWS S3 (eu-west-1)`.
    pub endpoint: String,
    /// The setting choosing the endpoint, e.g. `target.endpoint`.
    pub endpoint_setting: String,
    /// `expected_bucket_owner`, when set: a wrong owner is answered with AccessDenied too.
    pub owner: Option<String>,
}

impl Place {
    /// The place of `bucket` reached by `client`, built with `endpoint` (chosen by the
    /// setting `endpoint_setting`) when one was given, else `AWS_ENDPOINT_URL`, else AWS.
    pub fn new(
        client: &Client,
        bucket: &str,
        bucket_setting: &str,
        endpoint: Option<&str>,
        endpoint_setting: &str,
    ) -> Place {
        let from_env = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"]
            .iter()
            .find_map(|k| {
                std::env::var(k)
                    .ok()
                    .filter(|v| !v.is_empty())
                    .map(|v| (*k, v))
            });
        let (endpoint, endpoint_setting) = match (endpoint, from_env) {
            (Some(e), _) => (e.to_string(), endpoint_setting.to_string()),
            (None, Some((k, v))) => (v, k.to_string()),
            (None, None) => (
                format!(
                    "AWS S3 ({})",
                    client
                        .config()
                        .region()
                        .map(|r| r.to_string())
                        .unwrap_or_else(|| "no region".into())
                ),
                format!("AWS_REGION or {endpoint_setting}"),
            ),
        };
        Place {
            bucket: bucket.to_string(),
            bucket_setting: bucket_setting.to_string(),
            endpoint,
            endpoint_setting,
            owner: None,
        }
    }
}

/// One request: what godwit was doing (`writing`), the permission it needs (`s3:PutObject`)
/// and the full key (empty for the bucket itself).
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub doing: &'a str,
    pub action: &'a str,
    pub key: &'a str,
}

/// A failed S3 request as godwit reports it: the sentence, and whether S3 itself says trying
/// again can work (kept inside the `io::Error`, so the load can classify it: see
/// `error::Failure::from_io`).
#[derive(Debug, Clone)]
pub struct S3Failure {
    pub message: String,
    pub transient: bool,
}

impl std::fmt::Display for S3Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for S3Failure {}

/// The sentence for a failed request, as an I/O error.
pub fn sdk_error<E>(place: &Place, call: Call<'_>, e: &SdkError<E, HttpResponse>) -> io::Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    io::Error::other(S3Failure {
        message: describe(place, call, e),
        transient: transient(e),
    })
}

/// Whether trying the request again can work: no answer (unreachable, timed out, the
/// connection broke), a 5xx answer, or a code S3 uses for "slow down, try again".
pub fn transient<E>(e: &SdkError<E, HttpResponse>) -> bool
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match e {
        SdkError::DispatchFailure(d) => d.is_io() || d.is_timeout(),
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            matches!(
                e.code(),
                Some(
                    "SlowDown"
                        | "RequestTimeout"
                        | "InternalError"
                        | "ServiceUnavailable"
                        | "Throttling"
                        | "ThrottlingException"
                        | "RequestLimitExceeded"
                )
            ) || status.is_some_and(|s| s >= 500)
        }
        _ => false,
    }
}

/// `<doing> s3://bucket/key: <what happened> (<code>: <message>): <what to do>`.
pub fn describe<E>(place: &Place, call: Call<'_>, e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let object = if call.key.is_empty() {
        format!("s3://{}", place.bucket)
    } else {
        format!("s3://{}/{}", place.bucket, call.key)
    };
    one_line(&format!(
        "{} {object}: {}",
        call.doing,
        reason(place, call, e)
    ))
}

/// Multi-line texts (the credential chain's report) as one line.
fn one_line(text: &str) -> String {
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default().to_string();
    let rest: Vec<&str> = lines.collect();
    if rest.is_empty() {
        first
    } else {
        format!("{first} {}", rest.join("; "))
    }
}

fn reason<E>(place: &Place, call: Call<'_>, e: &SdkError<E, HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let endpoint = &place.endpoint;
    let fix_endpoint = &place.endpoint_setting;
    match e {
        SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
            let status = e.raw_response().map(|r| r.status().as_u16());
            service_reason(place, call, e.code(), e.message(), status)
        }
        SdkError::DispatchFailure(d) if d.is_io() || d.is_timeout() => format!(
            "cannot reach {endpoint} ({}): check {fix_endpoint} and the network",
            innermost(e)
        ),
        SdkError::TimeoutError(_) => {
            format!("{endpoint} did not answer in time: check {fix_endpoint} and the network")
        }
        _ => {
            let why = innermost(e);
            if why.to_lowercase().contains("credential") {
                format!(
                    "no AWS credentials ({why}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role"
                )
            } else {
                format!("the request to {endpoint} could not be sent ({why})")
            }
        }
    }
}

/// What a service's answer means, from its code (and HTTP status when it sent no code, as
/// for HEAD requests).
fn service_reason(
    place: &Place,
    call: Call<'_>,
    code: Option<&str>,
    message: Option<&str>,
    status: Option<u16>,
) -> String {
    let said = match (code, message.filter(|m| !m.is_empty())) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c.to_string(),
        (None, Some(m)) => format!("HTTP {}: {m}", status.unwrap_or(0)),
        (None, None) => format!("HTTP {}", status.unwrap_or(0)),
    };
    let bucket = &place.bucket;
    let code = code.unwrap_or_default();
    match (code, status) {
        ("NoSuchBucket", _) => bucket_missing(place, &said),
        ("NotFound", _) | ("", Some(404)) if call.key.is_empty() => bucket_missing(place, &said),
        ("NoSuchKey" | "NotFound", _) | ("", Some(404)) => format!(
            "there is no such object ({said}): check the key, or fix {}",
            place.bucket_setting
        ),
        (
            "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken"
            | "TokenRefreshRequired",
            _,
        ) => format!(
            "the AWS credentials were refused ({said}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the IAM role"
        ),
        ("AccessDenied" | "AllAccessDisabled", _) | ("", Some(403)) => {
            let resource = if call.action.starts_with("s3:ListBucket") || call.key.is_empty() {
                format!("arn:aws:s3:::{bucket}")
            } else {
                format!("arn:aws:s3:::{bucket}/{}", call.key)
            };
            let owner = place
                .owner
                .as_deref()
                .map(|o| format!(", and check that the bucket belongs to account {o} (target.expected_bucket_owner)"))
                .unwrap_or_default();
            format!(
                "access denied ({said}): grant {} on {resource} to the identity godwit runs as{owner}",
                call.action
            )
        }
        (
            "PermanentRedirect"
            | "AuthorizationHeaderMalformed"
            | "IllegalLocationConstraintException",
            _,
        )
        | ("", Some(301)) => format!(
            "the bucket {bucket} is in another region ({said}): set AWS_REGION to its region"
        ),
        ("", _) => format!(
            "{} sent an answer that is not from S3 ({said}): check {}",
            place.endpoint, place.endpoint_setting
        ),
        _ => format!("{} refused the request ({said})", place.endpoint),
    }
}

fn bucket_missing(place: &Place, said: &str) -> String {
    format!(
        "the bucket {} does not exist ({said}): create it or fix {}",
        place.bucket, place.bucket_setting
    )
}

/// The deepest cause's own text (`Connection refused (os error 111)`), which says what
/// happened; the layers above only say where.
fn innermost(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place() -> Place {
        Place {
            bucket: "b".into(),
            bucket_setting: "target.url".into(),
            endpoint: "http://s3.test".into(),
            endpoint_setting: "target.endpoint".into(),
            owner: Some("123".into()),
        }
    }

    const PUT: Call<'static> = Call {
        doing: "writing",
        action: "s3:PutObject",
        key: "lake/x",
    };

    #[test]
    fn codes_become_advice() {
        let p = place();
        let s = service_reason(&p, PUT, Some("NoSuchBucket"), Some("gone"), Some(404));
        assert_eq!(
            s,
            "the bucket b does not exist (NoSuchBucket: gone): create it or fix target.url"
        );
        let head = Call {
            doing: "checking",
            action: "s3:ListBucket",
            key: "",
        };
        let s = service_reason(&p, head, Some("NotFound"), None, Some(404));
        assert!(
            s.starts_with("the bucket b does not exist (NotFound)"),
            "{s}"
        );
        let s = service_reason(&p, PUT, Some("AccessDenied"), Some("no"), Some(403));
        assert_eq!(
            s,
            "access denied (AccessDenied: no): grant s3:PutObject on arn:aws:s3:::b/lake/x to the identity godwit runs as, and check that the bucket belongs to account 123 (target.expected_bucket_owner)"
        );
        let s = service_reason(&p, head, None, None, Some(403));
        assert!(s.contains("grant s3:ListBucket on arn:aws:s3:::b "), "{s}");
        let s = service_reason(&p, PUT, None, None, Some(502));
        assert_eq!(
            s,
            "http://s3.test sent an answer that is not from S3 (HTTP 502): check target.endpoint"
        );
        let s = service_reason(&p, PUT, Some("InvalidAccessKeyId"), Some("bad"), Some(403));
        assert!(s.starts_with("the AWS credentials were refused"), "{s}");
    }

    #[test]
    fn reports_are_one_line() {
        assert_eq!(
            one_line("no credentials. Attempted:\n  Environment: unset\n  Profile: none\n"),
            "no credentials. Attempted: Environment: unset; Profile: none"
        );
        assert_eq!(one_line("plain"), "plain");
    }
}
