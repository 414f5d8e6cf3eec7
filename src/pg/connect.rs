//! Connections to the source: URL → tokio-postgres config, TLS as libpq's `sslmode` means
//! it (godwit configures verify-ca / verify-full itself), and the pinned session settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, Config, NoTls};

/// Settings every godwit session pins, so values have one text form (SPEC §4).
const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 -c extra_float_digits=3 -c lc_monetary=C -c bytea_output=hex";

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Why a connection could not be made. All of these are start-up failures (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("source.url: {0}")]
    Url(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{0}")]
    Postgres(String),
}

/// Connection facts for sessions tokio-postgres cannot open (replication). The password is
/// not shown by `Debug`.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
    pub tls: TlsMode,
    pub root_cert: Option<PathBuf>,
    /// The pinned session settings, as startup `options`.
    pub options: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

/// A parsed source URL, ready to open connections.
#[derive(Clone)]
pub struct Source {
    config: Config,
    tls: TlsMode,
    root_cert: Option<PathBuf>,
    /// `host:port/dbname`, for messages (never the password).
    pub display: String,
}

impl Source {
    /// Parses a `postgres://` URL. `sslmode` and `sslrootcert` are handled here; every other
    /// parameter goes to tokio-postgres.
    pub fn from_url(raw: &str) -> Result<Source, ConnectError> {
        let mut url = url::Url::parse(raw).map_err(|e| ConnectError::Url(e.to_string()))?;
        let mut tls = TlsMode::Prefer;
        let mut root_cert = None;
        let mut rest = Vec::new();
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "sslmode" => {
                    tls = match v.as_ref() {
                        "disable" => TlsMode::Disable,
                        "allow" | "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        other => {
                            return Err(ConnectError::Url(format!(
                                "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                            )));
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(v.as_ref())),
                _ => rest.push((k.into_owned(), v.into_owned())),
            }
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        // libpq: `require` with a root certificate given behaves like verify-ca.
        if tls == TlsMode::Require && root_cert.is_some() {
            tls = TlsMode::VerifyCa;
        }
        let mut config: Config = url
            .as_str()
            .parse()
            .map_err(|e: tokio_postgres::Error| ConnectError::Url(e.to_string()))?;
        let user_options = config.get_options().unwrap_or_default().to_string();
        config.options(format!("{SESSION_OPTIONS} {user_options}").trim_end());
        if config.get_application_name().is_none() {
            config.application_name("godwit");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(15));
        }
        config.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        let host = url.host_str().unwrap_or("localhost").to_string();
        let port = url.port().unwrap_or(5432);
        let db = url.path().trim_start_matches('/').to_string();
        Ok(Source {
            config,
            tls,
            root_cert,
            display: format!("{host}:{port}/{db}"),
        })
    }

    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }

    /// A warning when this URL reaches a server off this machine without checking its
    /// certificate (`disable`, `prefer`, `require` without `sslrootcert`): the connection may
    /// be plaintext, or encrypted to whoever answers. libpq's meaning of each mode is kept;
    /// only the risk is said, with the fix.
    pub fn unverified_warning(&self) -> Option<String> {
        let how = match self.tls {
            TlsMode::Disable => "sends everything in plaintext",
            TlsMode::Prefer => {
                "may fall back to plaintext and does not check the server's certificate"
            }
            TlsMode::Require => "encrypts but does not check the server's certificate",
            TlsMode::VerifyCa | TlsMode::VerifyFull => return None,
        };
        let remote: Vec<String> = self
            .config
            .get_hosts()
            .iter()
            .filter(|h| !is_local(h))
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        if remote.is_empty() {
            return None;
        }
        let mode = match self.tls {
            TlsMode::Disable => "disable",
            TlsMode::Prefer => "prefer (the default)",
            _ => "require",
        };
        Some(format!(
            "source.url reaches {} with sslmode={mode}, which {how}: anyone on the network path \
             could read or change the data and the login. Fix: add \
             sslmode=verify-full&sslrootcert=<the server's CA file> to source.url \
             (sslrootcert=system for a public CA, as on RDS with its bundle installed)",
            remote.join(", ")
        ))
    }

    /// What a replication session needs to reach the same server as the same user.
    pub fn endpoint(&self) -> Endpoint {
        use tokio_postgres::config::Host;
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        Endpoint {
            host,
            port: self.config.get_ports().first().copied().unwrap_or(5432),
            user: self.config.get_user().unwrap_or("postgres").to_string(),
            password: self
                .config
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned())
                .unwrap_or_default(),
            dbname: self.config.get_dbname().unwrap_or("postgres").to_string(),
            tls: self.tls,
            root_cert: self.root_cert.clone(),
            options: SESSION_OPTIONS.to_string(),
        }
    }

    /// Opens one connection with the session settings pinned; its driver runs on tokio.
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        self.connect_pg()
            .await?
            .map_err(|e| ConnectError::Postgres(describe_error(&e, &self.display)))
    }

    /// The user godwit logs in as (for remedies: `GRANT … TO <user>`).
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("postgres")
    }

    /// Opens one connection after start-up, on behalf of `table`: a failure is classified
    /// (see [`crate::error::Failure::from_pg`]) — the server went away is recoverable, a
    /// refused login fatal.
    pub async fn open(&self, table: Option<&str>) -> Result<Client, crate::error::Failure> {
        match self.connect_pg().await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(
                crate::error::Failure::from_pg(e, &self.display, self.user(), None)
                    .doing("connecting"),
            )
            .map_err(|f| match table {
                Some(t) => f.table(t),
                None => f,
            }),
            Err(e) => Err(crate::error::Failure::because(
                crate::error::Kind::Fatal,
                "connecting to the source",
                e,
            )),
        }
    }

    async fn connect_pg(&self) -> Result<Result<Client, tokio_postgres::Error>, ConnectError> {
        Ok(if self.tls == TlsMode::Disable {
            self.config.connect(NoTls).await.map(|(c, conn)| {
                tokio::spawn(conn);
                c
            })
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.client_config()?);
            self.config.connect(tls).await.map(|(c, conn)| {
                tokio::spawn(conn);
                c
            })
        })
    }

    fn client_config(&self) -> Result<rustls::ClientConfig, ConnectError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConnectError::Tls(e.to_string()))?;
        let verifier: Arc<dyn ServerCertVerifier> = match self.tls {
            TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => {
                Arc::new(NoVerify(provider.clone()))
            }
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let roots = Arc::new(self.root_store()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                    .build()
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                Arc::new(Verify {
                    inner: webpki,
                    check_name: self.tls == TlsMode::VerifyFull,
                })
            }
        };
        Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    /// Root certificates: `sslrootcert=<file>`, `sslrootcert=system`, or libpq's default
    /// `~/.postgresql/root.crt`.
    fn root_store(&self) -> Result<RootCertStore, ConnectError> {
        let mut store = RootCertStore::empty();
        let path = match &self.root_cert {
            Some(p) if p.as_os_str() == "system" => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    let _ = store.add(cert);
                }
                return Ok(store);
            }
            Some(p) => p.clone(),
            None => std::env::home_dir()
                .unwrap_or_default()
                .join(".postgresql/root.crt"),
        };
        let certs = CertificateDer::pem_file_iter(&path).map_err(|e| {
            ConnectError::Tls(format!(
                "cannot read root certificate {}: {e} (set sslrootcert=<file> in source.url, or sslrootcert=system)",
                path.display()
            ))
        })?;
        for cert in certs {
            let cert = cert.map_err(|e| {
                ConnectError::Tls(format!("bad certificate in {}: {e}", path.display()))
            })?;
            store
                .add(cert)
                .map_err(|e| ConnectError::Tls(format!("{}: {e}", path.display())))?;
        }
        Ok(store)
    }
}

/// Whether `host` is this machine: a unix socket, `localhost` (or a name under it) or a
/// loopback address.
pub fn is_local(host: &tokio_postgres::config::Host) -> bool {
    use tokio_postgres::config::Host;
    match host {
        Host::Unix(_) => true,
        Host::Tcp(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                return true;
            }
            let bare = name.trim_start_matches('[').trim_end_matches(']');
            match bare.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => a.is_loopback(),
                Ok(std::net::IpAddr::V6(a)) => {
                    a.is_loopback() || a.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                }
                Err(_) => false,
            }
        }
    }
}

/// A readable one-line reason for a failed connection, without secrets.
pub fn describe_error(e: &tokio_postgres::Error, target: &str) -> String {
    if let Some(db) = e.as_db_error() {
        let hint = match db.code().code() {
            "28P01" | "28000" => " (check the user and password in source.url)",
            "3D000" => " (check the database name in source.url)",
            _ => "",
        };
        return format!("PostgreSQL at {target}: {}{hint}", db.message());
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    format!("cannot connect to PostgreSQL at {target}: {msg}")
}

/// `sslmode=require`/`prefer`: encrypt, but do not check who answers (as libpq does).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// verify-ca (chain only) and verify-full (chain and host name).
#[derive(Debug)]
struct Verify {
    inner: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Verify {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_tls_params_and_keeps_others() {
        let s = Source::from_url(
            "postgres://u:secret@db.example:6543/shop?sslmode=verify-full&sslrootcert=/tmp/ca.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(s.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(s.display, "db.example:6543/shop");
        assert_eq!(
            s.config.get_connect_timeout(),
            Some(&Duration::from_secs(3))
        );
        assert!(s.config.get_options().unwrap().contains("TimeZone=UTC"));
        let r = Source::from_url("postgres://h/db?sslmode=require&sslrootcert=/x").unwrap();
        assert_eq!(r.tls_mode(), TlsMode::VerifyCa);
        assert!(Source::from_url("postgres://h/db?sslmode=bogus").is_err());
    }

    #[test]
    fn local_hosts_are_told_apart() {
        use tokio_postgres::config::Host;
        for local in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "db.localhost",
            "127.0.0.1",
            "127.3.2.1",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_local(&Host::Tcp(local.into())), "{local}");
        }
        assert!(is_local(&Host::Unix("/var/run/postgresql".into())));
        for remote in [
            "db.example.com",
            "10.0.0.5",
            "192.168.1.2",
            "::2",
            "fe80::1",
            "localhost.example.com",
            "127.0.0.1.nip.io",
        ] {
            assert!(!is_local(&Host::Tcp(remote.into())), "{remote}");
        }
    }

    #[test]
    fn warns_when_a_remote_server_is_not_verified() {
        let warn = |url: &str| Source::from_url(url).unwrap().unverified_warning();
        for mode in [
            "",
            "?sslmode=disable",
            "?sslmode=prefer",
            "?sslmode=require",
        ] {
            let w = warn(&format!("postgres://u:secret@db.example.com/shop{mode}"))
                .unwrap_or_else(|| panic!("no warning for {mode:?}"));
            assert!(w.contains("db.example.com"), "{w}");
            assert!(w.contains("sslmode=verify-full&sslrootcert="), "{w}");
            assert!(!w.contains("secret"), "{w}");
        }
        for quiet in [
            "postgres://u:p@db.example.com/shop?sslmode=verify-full&sslrootcert=/ca.pem",
            "postgres://u:p@db.example.com/shop?sslmode=verify-ca&sslrootcert=/ca.pem",
            // libpq: require with a root certificate verifies the chain.
            "postgres://u:p@db.example.com/shop?sslmode=require&sslrootcert=/ca.pem",
            "postgres://u:p@localhost/shop?sslmode=disable",
            "postgres://u:p@127.0.0.1:5433/shop",
            "postgres://u:p@[::1]/shop?sslmode=prefer",
            "postgres://u:p@%2Fvar%2Frun%2Fpostgresql/shop",
        ] {
            assert_eq!(warn(quiet), None, "{quiet}");
        }
    }
}
