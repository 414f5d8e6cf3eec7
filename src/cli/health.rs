//! `godwit health [PIPELINE] [--url URL]`: asks a running `godwit run` for its `/healthz`
//! (the `[metrics] listen` server) and exits 0 on `200`, 1 otherwise, printing why — so a
//! container health check can run the binary itself (a small image has no curl).
//!
//! With a PIPELINE the address is its `[metrics] listen` (an unspecified address such as
//! `0.0.0.0` is asked on the loopback); otherwise `--url`. One plain HTTP/1.1 GET over a
//! TCP stream, bounded by `--timeout`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::Error;

/// Where `/healthz` is asked when neither a pipeline nor `--url` says otherwise.
pub const DEFAULT_URL: &str = "http://127.0.0.1:9187/healthz";

/// The answer is at most this long (a `/healthz` body is one line).
const MAX_ANSWER: u64 = 64 * 1024;

pub async fn execute(
    pipeline: Option<&str>,
    url: Option<&str>,
    timeout: Duration,
) -> Result<i32, Error> {
    let target = match (pipeline, url) {
        (Some(_), Some(_)) => {
            return Err(Error::Startup(
                "give either a PIPELINE (its [metrics] listen is asked) or --url, not both"
                    .to_string(),
            ));
        }
        (Some(path), None) => {
            let p = super::load_pipeline(path).await?;
            let Some(listen) = p.metrics.listen else {
                return Err(Error::Startup(format!(
                    "{}: [metrics] listen is empty, so `godwit run` serves no /healthz: set it \
                     (e.g. listen = \"0.0.0.0:9187\"), or pass --url",
                    p.file
                )));
            };
            Target::from_listen(listen)
        }
        (None, url) => Target::parse(url.unwrap_or(DEFAULT_URL))?,
    };
    match tokio::time::timeout(timeout, get(&target)).await {
        Ok(Ok((200, body))) => {
            println!("{}", one_line(&body, "ok"));
            Ok(0)
        }
        Ok(Ok((status, body))) => {
            eprintln!(
                "unhealthy: {} answered HTTP {status}: {}",
                target.url,
                one_line(&body, "(no reason given)")
            );
            Ok(1)
        }
        Ok(Err(e)) => {
            eprintln!(
                "unhealthy: cannot ask {}: {e} (is `godwit run` running with [metrics] listen on \
                 that address?)",
                target.url
            );
            Ok(1)
        }
        Err(_) => {
            eprintln!(
                "unhealthy: {} did not answer within {:.1}s",
                target.url,
                timeout.as_secs_f64()
            );
            Ok(1)
        }
    }
}

/// The body's first line, trimmed, or `empty` when there is none.
fn one_line(body: &str, empty: &str) -> String {
    let line = body.lines().next().unwrap_or("").trim();
    if line.is_empty() {
        empty.to_string()
    } else {
        line.chars().take(300).collect()
    }
}

#[derive(Debug)]
struct Target {
    /// For messages: the URL asked.
    url: String,
    /// host:port to connect to.
    connect: String,
    /// The Host header.
    host: String,
    /// Path and query.
    path: String,
}

impl Target {
    fn from_listen(listen: SocketAddr) -> Target {
        let ip = match listen.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let addr = SocketAddr::new(ip, listen.port());
        Target {
            url: format!("http://{addr}/healthz"),
            connect: addr.to_string(),
            host: addr.to_string(),
            path: "/healthz".to_string(),
        }
    }

    fn parse(s: &str) -> Result<Target, Error> {
        let bad = |why: &str| {
            Error::Startup(format!(
                "--url {s}: {why}; write it as http://HOST:PORT/healthz, e.g. {DEFAULT_URL}"
            ))
        };
        let u = url::Url::parse(s).map_err(|e| bad(&e.to_string()))?;
        if u.scheme() != "http" {
            return Err(bad("only http:// is served by [metrics] listen"));
        }
        let host = match u.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(ip)) => ip.to_string(),
            Some(url::Host::Ipv6(ip)) => format!("[{ip}]"),
            None => return Err(bad("no host")),
        };
        let port = u.port_or_known_default().unwrap_or(80);
        let mut path = u.path().to_string();
        if let Some(q) = u.query() {
            path.push('?');
            path.push_str(q);
        }
        Ok(Target {
            url: s.to_string(),
            connect: format!("{host}:{port}"),
            host: format!("{host}:{port}"),
            path,
        })
    }
}

/// One GET: the status code and the body.
async fn get(t: &Target) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(&t.connect).await?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: godwit-health\r\nConnection: close\r\n\r\n",
        t.path, t.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    (&mut stream).take(MAX_ANSWER).read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw);
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP answer");
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(invalid)?;
    let status_line = head.lines().next().ok_or_else(invalid)?;
    let mut parts = status_line.split_whitespace();
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/")) {
        return Err(invalid());
    }
    let status = parts
        .next()
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(invalid)?;
    // `/healthz` answers with a Content-Length body; a chunked one is not expected, but its
    // first line would be a size, which `one_line` would show: good enough for a reason.
    Ok((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_on_every_interface_is_asked_on_the_loopback() {
        let t = Target::from_listen("0.0.0.0:9187".parse().unwrap());
        assert_eq!(t.connect, "127.0.0.1:9187");
        let t = Target::from_listen("[::]:9187".parse().unwrap());
        assert_eq!(t.connect, "[::1]:9187");
        let t = Target::from_listen("10.1.2.3:80".parse().unwrap());
        assert_eq!(t.connect, "10.1.2.3:80");
    }

    #[test]
    fn urls() {
        let t = Target::parse("http://localhost:9187/healthz?x=1").unwrap();
        assert_eq!(
            (t.connect.as_str(), t.path.as_str()),
            ("localhost:9187", "/healthz?x=1")
        );
        assert!(Target::parse("https://h/healthz").is_err());
        assert!(Target::parse("nonsense").is_err());
    }
}
