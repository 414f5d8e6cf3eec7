//! Connection URLs (PostgreSQL, Redis) that may carry passwords, and object-store locations (S3, local).
//!
//! A [`SecretUrl`] never shows its password through `Debug` or `Display`; only [`SecretUrl::expose`] gives
//! the real text, for handing to a client library. Validation messages show the redacted form only.

use std::fmt;
use std::path::PathBuf;

/// An interpolated connection URL that may contain a password.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL (no validation: the pipeline parser validates before wrapping).
    pub fn new(url: String) -> Self {
        SecretUrl(url)
    }

    /// The real URL, password included. Only for handing to a client; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password (and any `password=`-like query parameter) replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// The query parameter `name`, if present (its raw, undecoded value). Do not use for secrets in logs.
    pub fn query_param(&self, name: &str) -> Option<&str> {
        let (_, query) = self.0.split_once('?')?;
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SecretUrl").field(&self.redacted()).finish()
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Redacts a URL conservatively: without a `scheme://` nothing of the value is shown; otherwise
/// everything between the first `:` of the user-info and the **last** `@` becomes `***` (so a password
/// with a raw `@`, `/` or `?` is still hidden), and the values of query parameters whose name mentions
/// `pass`, `secret` or `token` become `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(value hidden: not a URL)".to_string();
    };
    if !scheme
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return "(value hidden: not a URL)".to_string();
    }
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let mut out = format!("{scheme}://");
    if let Some(ui) = userinfo {
        match ui.split_once(':') {
            Some((user, _)) => {
                out.push_str(user);
                out.push_str(":***");
            }
            None => out.push_str(ui),
        }
        out.push('@');
    }
    match hostpart.split_once('?') {
        Some((before, query)) => {
            out.push_str(before);
            out.push('?');
            let parts: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if is_secret_param(k) => format!("{k}=***"),
                    Some(_) => kv.to_string(),
                    None if is_secret_param(kv) => "***".to_string(),
                    None => kv.to_string(),
                })
                .collect();
            out.push_str(&parts.join("&"));
        }
        None => out.push_str(hostpart),
    }
    out
}

fn is_secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    n.contains("pass") || n.contains("secret") || n.contains("token")
}

/// A validation failure: message and optional hint, both free of secrets.
pub type UrlError = (String, Option<String>);

/// PostgreSQL `sslmode` values.
pub const SSLMODES: &[&str] = &["disable", "prefer", "require", "verify-ca", "verify-full"];

const PG_EXAMPLE: &str = "postgres://user:password@host:5432/dbname?sslmode=require";

/// The parts of a `scheme://[userinfo@]authority[/path][?query]` URL, split without decoding.
struct Parts<'a> {
    userinfo: Option<&'a str>,
    authority: &'a str,
    path: Option<&'a str>,
    query: Option<&'a str>,
}

fn split_parts(rest: &str) -> Parts<'_> {
    let (userinfo, hostpart) = match rest.rfind('@') {
        Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
        None => (None, rest),
    };
    let (before_q, query) = match hostpart.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (hostpart, None),
    };
    let (authority, path) = match before_q.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (before_q, None),
    };
    Parts {
        userinfo,
        authority,
        path,
        query,
    }
}

fn check_userinfo(ui: &str, shown: &str) -> Result<(), UrlError> {
    if ui.contains(['/', '?', '#', '@']) {
        return Err((
            format!("the user name or password in {shown} contains a raw `/`, `?`, `#` or `@`"),
            Some("percent-encode special characters in the password, e.g. `@` as %40, `/` as %2F, `?` as %3F, `#` as %23".into()),
        ));
    }
    check_percent(ui).map_err(|_| {
        (
            format!("the user name or password in {shown} has a `%` that is not followed by two hex digits"),
            Some("percent-encode special characters in the password: `%` itself is written %25".into()),
        )
    })
}

fn check_percent(s: &str) -> Result<(), ()> {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if i + 2 >= b.len() || !(b[i + 1].is_ascii_hexdigit() && b[i + 2].is_ascii_hexdigit()) {
                return Err(());
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Checks one `host[:port]` (IPv6 in brackets). Shows the host only when there is no user-info that
/// could have been mistaken for it.
fn check_host_port(hp: &str, shown: &str) -> Result<(), UrlError> {
    let (host, port) = if let Some(stripped) = hp.strip_prefix('[') {
        match stripped.split_once(']') {
            Some((h, rest)) => {
                if h.is_empty() {
                    return Err((format!("{shown} has an empty IPv6 address"), None));
                }
                match rest {
                    "" => (h, None),
                    r => match r.strip_prefix(':') {
                        Some(p) => (h, Some(p)),
                        None => {
                            return Err((format!("{shown} has text after an IPv6 address"), None));
                        }
                    },
                }
            }
            None => return Err((format!("{shown} has an unclosed `[` in the host"), None)),
        }
    } else {
        match hp.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hp, None),
        }
    };
    if host.is_empty() {
        return Err((
            format!("{shown} has no host"),
            Some(format!("write it like {PG_EXAMPLE}")),
        ));
    }
    if host.contains(char::is_whitespace) {
        return Err((format!("the host in {shown} contains whitespace"), None));
    }
    if let Some(p) = port {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => {}
            _ => {
                return Err((
                    format!("the port in {shown} is not a number from 1 to 65535"),
                    Some(
                        "if the password contains `:` or `@`, percent-encode it (%3A, %40)".into(),
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Validates a PostgreSQL connection URL (`postgres://` or `postgresql://`): a host (in the authority
/// or as a `host=` query parameter), ports, well-formed user-info, and `sslmode` when given. Other query
/// parameters (`sslrootcert`, `application_name`, …) are passed through unchecked.
pub fn validate_postgres(url: &str) -> Result<(), UrlError> {
    let shown = redact_url(url);
    if url.trim().is_empty() {
        return Err((
            "is empty".into(),
            Some(format!(
                "set it to a PostgreSQL URL, e.g. {PG_EXAMPLE} (usually via ${{VAR}})"
            )),
        ));
    }
    let rest = match url.split_once("://") {
        Some((scheme, rest)) if scheme == "postgres" || scheme == "postgresql" => rest,
        _ => {
            return Err((
                format!("must be a postgres:// or postgresql:// URL, got {shown}"),
                Some(format!("write it like {PG_EXAMPLE}")),
            ));
        }
    };
    let parts = split_parts(rest);
    if let Some(ui) = parts.userinfo {
        check_userinfo(ui, &shown)?;
    }
    let mut params = Vec::new();
    if let Some(q) = parts.query {
        for kv in q.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some((k, v)) => params.push((k, v)),
                None => {
                    return Err((
                        format!("a query parameter in {shown} has no `=value`"),
                        Some("write parameters as ?name=value&name2=value2".into()),
                    ));
                }
            }
        }
    }
    let host_param = params.iter().any(|(k, v)| *k == "host" && !v.is_empty());
    if parts.authority.is_empty() {
        if !host_param {
            return Err((
                format!("{shown} has no host"),
                Some(format!("write it like {PG_EXAMPLE}")),
            ));
        }
    } else {
        for hp in parts.authority.split(',') {
            check_host_port(hp, &shown)?;
        }
    }
    if let Some(path) = parts.path
        && check_percent(path).is_err()
    {
        return Err((
            format!("the database name in {shown} has a `%` not followed by two hex digits"),
            None,
        ));
    }
    for (k, v) in params {
        if k == "sslmode" && !SSLMODES.contains(&v) {
            return Err((
                format!("sslmode \"{v}\" is not valid"),
                Some(format!("use one of: {}", SSLMODES.join(", "))),
            ));
        }
    }
    Ok(())
}

/// What a Redis URL says beyond its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrlInfo {
    /// `rediss://`.
    pub tls: bool,
    /// The database number from the path, 0 when absent.
    pub db: u32,
}

/// Validates a Redis URL: `redis://` or `rediss://` (TLS), optional `user:password@`, one host, optional
/// port and `/db` number. Query parameters are passed through.
pub fn validate_redis(url: &str) -> Result<RedisUrlInfo, UrlError> {
    let shown = redact_url(url);
    let example = "redis://127.0.0.1:6379 or rediss://user:password@host:6379";
    if url.trim().is_empty() {
        return Err(("is empty".into(), Some(format!("write it like {example}"))));
    }
    let (tls, rest) = match url.split_once("://") {
        Some(("redis", rest)) => (false, rest),
        Some(("rediss", rest)) => (true, rest),
        _ => {
            return Err((
                format!("must be a redis:// or rediss:// URL, got {shown}"),
                Some(format!("write it like {example}")),
            ));
        }
    };
    let parts = split_parts(rest);
    if let Some(ui) = parts.userinfo {
        check_userinfo(ui, &shown)?;
    }
    if parts.authority.is_empty() {
        return Err((
            format!("{shown} has no host"),
            Some(format!("write it like {example}")),
        ));
    }
    if parts.authority.contains(',') {
        return Err((
            format!("{shown} names several hosts"),
            Some("name one node; with cluster = true the others are discovered".into()),
        ));
    }
    check_host_port(parts.authority, &shown)?;
    let db = match parts.path {
        None | Some("") => 0,
        Some(p) => p.parse::<u32>().map_err(|_| {
            (
                format!("the path of {shown} must be a database number like /0"),
                None,
            )
        })?,
    };
    Ok(RedisUrlInfo { tls, db })
}

/// Where data or state goes: an S3 bucket and prefix, a local directory, or nowhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    S3 { bucket: String, prefix: String },
    File(PathBuf),
    None,
}

/// Parses `s3://bucket[/prefix]`, `file://path` (`file://./out` is the relative path `./out`,
/// `file:///abs` the absolute `/abs`) and, when `allow_none`, `none`.
pub fn parse_location(s: &str, allow_none: bool) -> Result<Location, UrlError> {
    let forms = if allow_none {
        "s3://bucket/prefix, file://./dir or none"
    } else {
        "s3://bucket/prefix or file://./dir"
    };
    if allow_none && s == "none" {
        return Ok(Location::None);
    }
    if let Some(rest) = s.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket)?;
        if prefix.contains(['?', '#']) {
            return Err((
                format!("the prefix of \"{s}\" contains `?` or `#`"),
                Some("write a plain key prefix, e.g. s3://bucket/exports/shop".into()),
            ));
        }
        let prefix = prefix.trim_matches('/').to_string();
        if prefix.contains("//") {
            return Err((
                format!("the prefix of \"{s}\" contains an empty path segment (`//`)"),
                None,
            ));
        }
        return Ok(Location::S3 {
            bucket: bucket.to_string(),
            prefix,
        });
    }
    if let Some(path) = s.strip_prefix("file://") {
        if path.is_empty() {
            return Err((
                "\"file://\" names no directory".into(),
                Some("write file://./dir (relative) or file:///abs/dir (absolute)".into()),
            ));
        }
        return Ok(Location::File(PathBuf::from(path)));
    }
    Err((
        format!("\"{s}\" is not a supported location"),
        Some(format!("write {forms}")),
    ))
}

fn check_bucket(bucket: &str) -> Result<(), UrlError> {
    let hint = Some(
        "bucket names are 3-63 characters of lowercase letters, digits, `.` and `-`, \
         starting and ending with a letter or digit"
            .to_string(),
    );
    let ok_chars = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    let ends_ok =
        |c: Option<char>| matches!(c, Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit());
    if bucket.is_empty() {
        return Err(("the S3 URL names no bucket".into(), hint));
    }
    if !(3..=63).contains(&bucket.len())
        || !ok_chars
        || !ends_ok(bucket.chars().next())
        || !ends_ok(bucket.chars().last())
        || bucket.contains("..")
    {
        return Err((format!("\"{bucket}\" is not a valid S3 bucket name"), hint));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/shop?sslmode=require"),
            "postgres://app:***@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://app:p@ss/w?rd@db/shop"),
            "postgres://app:***@db/shop"
        );
        assert_eq!(
            redact_url("postgres://app@db/shop"),
            "postgres://app@db/shop"
        );
        assert_eq!(
            redact_url("postgres://db/shop?user=a&password=hunter2"),
            "postgres://db/shop?user=a&password=***"
        );
        assert_eq!(redact_url("redis://:tok@r:6379"), "redis://:***@r:6379");
        assert!(!redact_url("hunter2").contains("hunter2"));
        assert!(!redact_url("host=x password=hunter2").contains("hunter2"));
        let s = SecretUrl::new("postgres://u:topsecret@h/d".into());
        assert!(!format!("{s:?}").contains("topsecret"));
        assert!(!format!("{s}").contains("topsecret"));
        assert_eq!(s.expose(), "postgres://u:topsecret@h/d");
    }

    #[test]
    fn query_param() {
        let s = SecretUrl::new("postgres://h/d?sslmode=require&sslrootcert=/ca.pem".into());
        assert_eq!(s.query_param("sslmode"), Some("require"));
        assert_eq!(s.query_param("sslrootcert"), Some("/ca.pem"));
        assert_eq!(s.query_param("nope"), None);
    }

    #[test]
    fn postgres_ok() {
        for u in [
            "postgres://u:p@localhost:5432/db",
            "postgresql://localhost/db",
            "postgres://u:p%40ss@h/db?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            "postgres://u@[::1]:5432/db",
            "postgres://h1:5432,h2:5433/db?target_session_attrs=read-write",
            "postgres:///db?host=/var/run/postgresql",
            "postgres://h/db?application_name=godwit&whatever=1",
        ] {
            assert_eq!(validate_postgres(u), Ok(()), "{u}");
        }
    }

    #[test]
    fn postgres_bad() {
        for (u, needle) in [
            ("", "empty"),
            ("mysql://h/db", "postgres://"),
            ("localhost:5432", "postgres://"),
            ("postgres:///db", "no host"),
            ("postgres://h:abc/db", "port"),
            ("postgres://h:0/db", "port"),
            ("postgres://h/db?sslmode=maybe", "sslmode"),
            ("postgres://u:p%zz@h/db", "percent"),
            ("postgres://u:a/b@h/db", "raw"),
            ("postgres://h/db?flag", "no `=value`"),
        ] {
            let (msg, hint) = validate_postgres(u).expect_err(u);
            let all = format!("{msg} {}", hint.unwrap_or_default());
            assert!(all.contains(needle), "{u}: {all}");
        }
    }

    #[test]
    fn postgres_errors_hide_password() {
        for u in [
            "postgres://u:hunter2@h:notaport/db",
            "postgres://u:hun/ter2@h/db",
            "postgres://u:hunter2%zz@h/db",
            "mysql://u:hunter2@h/db",
            "postgres://u:hunter2@/db",
            "postgres://u:hunter2@h/db?sslmode=bogus",
            "postgres://u:hunter2@h/db?password=hunter2&x",
        ] {
            let (msg, hint) = validate_postgres(u).expect_err(u);
            assert!(!msg.contains("hunter2"), "{u}: {msg}");
            assert!(!hint.unwrap_or_default().contains("hunter2"), "{u}");
        }
    }

    #[test]
    fn redis() {
        assert_eq!(
            validate_redis("redis://127.0.0.1:6379"),
            Ok(RedisUrlInfo { tls: false, db: 0 })
        );
        assert_eq!(
            validate_redis("rediss://default:pw@cache.example:6380/2"),
            Ok(RedisUrlInfo { tls: true, db: 2 })
        );
        assert!(validate_redis("http://h").is_err());
        assert!(validate_redis("redis://").is_err());
        assert!(validate_redis("redis://h:x").is_err());
        assert!(validate_redis("redis://h/abc").is_err());
        assert!(validate_redis("redis://a,b").is_err());
        let (msg, _) = validate_redis("redis://u:hunter2@h:port").unwrap_err();
        assert!(!msg.contains("hunter2"));
    }

    #[test]
    fn locations() {
        assert_eq!(
            parse_location("s3://my-bucket/exports/shop/", true),
            Ok(Location::S3 {
                bucket: "my-bucket".into(),
                prefix: "exports/shop".into()
            })
        );
        assert_eq!(
            parse_location("s3://my-bucket", true),
            Ok(Location::S3 {
                bucket: "my-bucket".into(),
                prefix: String::new()
            })
        );
        assert_eq!(
            parse_location("file://./out", true),
            Ok(Location::File(PathBuf::from("./out")))
        );
        assert_eq!(
            parse_location("file:///var/lib/godwit", true),
            Ok(Location::File(PathBuf::from("/var/lib/godwit")))
        );
        assert_eq!(parse_location("none", true), Ok(Location::None));
        assert!(parse_location("none", false).is_err());
        assert!(parse_location("s3://", true).is_err());
        assert!(parse_location("s3://My_Bucket/x", true).is_err());
        assert!(parse_location("s3://ab/x", true).is_err());
        assert!(parse_location("s3://b-ucket/a//b", true).is_err());
        assert!(parse_location("file://", true).is_err());
        assert!(parse_location("./out", true).is_err());
        assert!(parse_location("gs://b/p", true).is_err());
    }
}
