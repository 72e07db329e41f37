//! Connection settings for a real NATS cluster: server URLs, TLS and credentials, building the
//! [`async_nats::Client`] that the [`NatsPublisher`](super::NatsPublisher) and the consumers take.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dtx_postgres::nats::{NatsConnection, NatsPublisher};
//! use dtx_postgres::tls::Tls;
//!
//! let client = NatsConnection::new(["tls://nats-1.internal:4222", "tls://nats-2.internal:4222"])
//!     .tls(Tls::new().ca_file("/etc/dtx/nats-ca.pem"))
//!     .user_and_password("orders", std::env::var("NATS_PASSWORD")?)
//!     .connect()
//!     .await?;
//! let publisher = NatsPublisher::new(client, "events");
//! # Ok(())
//! # }
//! ```

use crate::tls::{Secret, Tls, TlsError};
use async_nats::{ConnectErrorKind, ConnectOptions, ServerAddr};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How a NATS client proves who it is.
#[derive(Clone, Debug, Default)]
enum Auth {
    #[default]
    None,
    UserPassword {
        user: String,
        password: Secret,
    },
    Token(Secret),
    NKey(Secret),
    CredentialsFile(PathBuf),
    Credentials(Secret),
}

/// How to connect to a NATS cluster: the servers, TLS, and one kind of credentials
/// (user and password, token, `NKey` seed, or a `.creds` file); [`connect`](Self::connect) gives
/// the client.
///
/// Setting credentials again replaces the earlier ones. Secrets (passwords, tokens, seeds, the
/// contents of a `.creds` file, user info in a URL) never show in `Debug` output nor in a
/// [`NatsConnectError`].
///
/// ```
/// use dtx_postgres::nats::NatsConnection;
///
/// let connection = NatsConnection::new(["nats://127.0.0.1:4222"]).token("s3cr3t-token");
/// assert!(!format!("{connection:?}").contains("s3cr3t"));
/// ```
#[derive(Clone)]
pub struct NatsConnection {
    servers: Vec<String>,
    tls: Option<Tls>,
    tls_required: bool,
    auth: Auth,
    name: Option<String>,
    connection_timeout: Option<Duration>,
}

impl fmt::Debug for NatsConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let servers: Vec<String> = self.servers.iter().map(|s| redact(s)).collect();
        f.debug_struct("NatsConnection")
            .field("servers", &servers)
            .field("tls", &self.tls)
            .field("tls_required", &self.tls_required)
            .field("auth", &self.auth)
            .field("name", &self.name)
            .field("connection_timeout", &self.connection_timeout)
            .finish()
    }
}

impl NatsConnection {
    /// Settings for the cluster reached through `servers` (`nats://host:port`,
    /// `tls://host:port` or `host:port`): no TLS unless the server asks for it, no credentials.
    ///
    /// ```
    /// let connection = dtx_postgres::nats::NatsConnection::new(["nats-1:4222", "nats-2:4222"]);
    /// ```
    pub fn new<I, S>(servers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            servers: servers.into_iter().map(Into::into).collect(),
            tls: None,
            tls_required: false,
            auth: Auth::None,
            name: None,
            connection_timeout: None,
        }
    }

    /// Connects over TLS with these settings (CA certificates, client certificate), and refuses a
    /// server that does not speak TLS.
    ///
    /// ```
    /// use dtx_postgres::nats::NatsConnection;
    /// use dtx_postgres::tls::Tls;
    ///
    /// let connection = NatsConnection::new(["tls://nats:4222"])
    ///     .tls(Tls::new().ca_file("ca.pem").client_cert_files("client.pem", "client-key.pem"));
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self.tls_required = true;
        self
    }

    /// Whether the connection must be TLS (default: only with [`tls`](Self::tls)). Requiring it
    /// without [`tls`](Self::tls) trusts the system's CA certificates.
    ///
    /// ```
    /// let connection = dtx_postgres::nats::NatsConnection::new(["tls://connect.example.com"])
    ///     .tls_required(true);
    /// ```
    #[must_use]
    pub fn tls_required(mut self, required: bool) -> Self {
        self.tls_required = required;
        self
    }

    /// Authenticates with a user name and password.
    ///
    /// ```
    /// let connection = dtx_postgres::nats::NatsConnection::new(["nats:4222"])
    ///     .user_and_password("orders", "s3cr3t");
    /// ```
    #[must_use]
    pub fn user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.auth = Auth::UserPassword {
            user: user.into(),
            password: Secret::new(password),
        };
        self
    }

    /// Authenticates with a token.
    ///
    /// ```
    /// let connection = dtx_postgres::nats::NatsConnection::new(["nats:4222"]).token("s3cr3t");
    /// ```
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.auth = Auth::Token(Secret::new(token));
        self
    }

    /// Authenticates with an `NKey`: `seed` is the user's seed (`SU…`), which signs the server's
    /// challenge; only its public key is sent.
    ///
    /// ```
    /// # let seed = String::new();
    /// let connection = dtx_postgres::nats::NatsConnection::new(["nats:4222"]).nkey(seed);
    /// ```
    #[must_use]
    pub fn nkey(mut self, seed: impl Into<String>) -> Self {
        self.auth = Auth::NKey(Secret::new(seed));
        self
    }

    /// Authenticates with the user JWT and `NKey` seed of a `.creds` file (decentralised auth, as
    /// `nsc` writes them); the file is read by [`options`](Self::options).
    ///
    /// ```
    /// let connection = dtx_postgres::nats::NatsConnection::new(["tls://connect.example.com"])
    ///     .credentials_file("/etc/dtx/orders.creds");
    /// ```
    #[must_use]
    pub fn credentials_file(mut self, path: impl AsRef<Path>) -> Self {
        self.auth = Auth::CredentialsFile(path.as_ref().to_owned());
        self
    }

    /// Authenticates with the contents of a `.creds` file given as text.
    ///
    /// ```
    /// # let creds = String::new();
    /// let connection = dtx_postgres::nats::NatsConnection::new(["nats:4222"]).credentials(creds);
    /// ```
    #[must_use]
    pub fn credentials(mut self, creds: impl Into<String>) -> Self {
        self.auth = Auth::Credentials(Secret::new(creds));
        self
    }

    /// The client's name, shown by the server's monitoring.
    ///
    /// ```
    /// let connection = dtx_postgres::nats::NatsConnection::new(["nats:4222"]).name("orders-relay");
    /// ```
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Bounds establishing one connection (TCP, TLS and the handshake; async-nats's default is
    /// 5 s).
    ///
    /// ```
    /// let connection = dtx_postgres::nats::NatsConnection::new(["nats:4222"])
    ///     .connection_timeout(std::time::Duration::from_secs(2));
    /// ```
    #[must_use]
    pub fn connection_timeout(mut self, timeout: Duration) -> Self {
        self.connection_timeout = Some(timeout);
        self
    }

    /// The [`ConnectOptions`] these settings make, with the TLS files and credentials read and
    /// checked: add options of your own before connecting with it and
    /// [`server_addrs`](Self::server_addrs).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use dtx_postgres::nats::NatsConnection;
    ///
    /// let connection = NatsConnection::new(["nats:4222"]).user_and_password("orders", "s3cr3t");
    /// let client = connection
    ///     .options()?
    ///     .retry_on_initial_connect()
    ///     .connect(connection.server_addrs()?)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Unusable TLS material ([`NatsConnectError::Tls`]), an unreadable `.creds` file, a malformed
    /// seed or `.creds` content.
    pub fn options(&self) -> Result<ConnectOptions, NatsConnectError> {
        let mut options = ConnectOptions::new().require_tls(self.tls_required);
        if let Some(tls) = &self.tls {
            options = options.tls_client_config(tls.client_config()?);
        }
        if let Some(name) = &self.name {
            options = options.name(name);
        }
        if let Some(timeout) = self.connection_timeout {
            options = options.connection_timeout(timeout);
        }
        Ok(match &self.auth {
            Auth::None => options,
            Auth::UserPassword { user, password } => {
                options.user_and_password(user.clone(), password.expose().to_owned())
            }
            Auth::Token(token) => options.token(token.expose().to_owned()),
            Auth::NKey(seed) => {
                nkeys::KeyPair::from_seed(seed.expose()).map_err(|e| {
                    NatsConnectError::BadCredentials {
                        origin: "the NKey seed".to_owned(),
                        problem: e.to_string(),
                    }
                })?;
                options.nkey(seed.expose().to_owned())
            }
            Auth::CredentialsFile(path) => {
                let creds = std::fs::read_to_string(path).map_err(|source| {
                    NatsConnectError::UnreadableCredentials {
                        path: path.clone(),
                        source,
                    }
                })?;
                with_creds(options, &creds, path.display().to_string())?
            }
            Auth::Credentials(creds) => with_creds(
                options,
                creds.expose(),
                "the credentials given as text".to_owned(),
            )?,
        })
    }

    /// The servers, parsed.
    ///
    /// ```
    /// let connection = dtx_postgres::nats::NatsConnection::new(["nats-1:4222", "nats-2:4222"]);
    /// assert_eq!(connection.server_addrs().unwrap().len(), 2);
    /// ```
    ///
    /// # Errors
    ///
    /// No server given ([`NatsConnectError::NoServers`]), or one that is not a NATS URL.
    pub fn server_addrs(&self) -> Result<Vec<ServerAddr>, NatsConnectError> {
        if self.servers.is_empty() {
            return Err(NatsConnectError::NoServers);
        }
        self.servers
            .iter()
            .map(|server| {
                server
                    .parse::<ServerAddr>()
                    .map_err(|e| NatsConnectError::InvalidServer {
                        server: redact(server),
                        problem: e.to_string(),
                    })
            })
            .collect()
    }

    /// Connects: reads the TLS material and credentials, then tries each server once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), dtx_postgres::nats::NatsConnectError> {
    /// let client = dtx_postgres::nats::NatsConnection::new(["nats:4222"])
    ///     .token("s3cr3t")
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Everything [`options`](Self::options) and [`server_addrs`](Self::server_addrs) refuse,
    /// and the server refusing the connection: [`NatsConnectError::TlsHandshake`] (its
    /// certificate not trusted, say), [`NatsConnectError::Refused`] (credentials not accepted),
    /// [`NatsConnectError::Unreachable`].
    pub async fn connect(&self) -> Result<async_nats::Client, NatsConnectError> {
        let options = self.options()?;
        let addrs = self.server_addrs()?;
        options.connect(addrs).await.map_err(|e| self.refused(&e))
    }

    /// The error a failed connect becomes.
    fn refused(&self, error: &async_nats::ConnectError) -> NatsConnectError {
        let servers = self
            .servers
            .iter()
            .map(|s| redact(s))
            .collect::<Vec<_>>()
            .join(",");
        let problem = error.to_string();
        match error.kind() {
            ConnectErrorKind::Tls => NatsConnectError::TlsHandshake { servers, problem },
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                NatsConnectError::Refused { servers, problem }
            }
            // async-nats reports a failed handshake (an untrusted certificate) as I/O.
            _ if caused_by_tls(error) => NatsConnectError::TlsHandshake { servers, problem },
            _ => NatsConnectError::Unreachable { servers, problem },
        }
    }
}

/// Whether a rustls error is among the causes of `error`, looking inside I/O errors too (their
/// `source` skips the error they wrap).
fn caused_by_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<rustls::Error>() {
            return true;
        }
        cause = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    false
}

fn with_creds(
    options: ConnectOptions,
    creds: &str,
    origin: String,
) -> Result<ConnectOptions, NatsConnectError> {
    options
        .credentials(creds)
        .map_err(|e| NatsConnectError::BadCredentials {
            origin,
            problem: e.to_string(),
        })
}

/// `url` without the user info (`nats://user:pass@host` → `nats://***@host`).
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").map_or(("", url), |(s, r)| (s, r));
    match rest.rsplit_once('@') {
        Some((_, host)) if scheme.is_empty() => format!("***@{host}"),
        Some((_, host)) => format!("{scheme}://***@{host}"),
        None => url.to_owned(),
    }
}

/// Why a [`NatsConnection`] could not connect. No variant holds a secret.
///
/// ```no_run
/// # async fn demo() {
/// use dtx_postgres::nats::{NatsConnectError, NatsConnection};
///
/// match NatsConnection::new(["nats:4222"]).token("wrong").connect().await {
///     Err(NatsConnectError::Refused { servers, .. }) => eprintln!("{servers} refused the token"),
///     Err(other) => eprintln!("{other}"),
///     Ok(_client) => {}
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsConnectError {
    /// The TLS settings are unusable (a CA file that cannot be read, PEM that does not parse).
    #[error("NATS TLS settings: {0}")]
    Tls(#[from] TlsError),
    /// The `.creds` file could not be read.
    #[error("cannot read the NATS credentials file {}: {source}", path.display())]
    UnreadableCredentials {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// A seed or `.creds` content that does not parse.
    #[error("{origin} is not usable: {problem}")]
    BadCredentials {
        /// What was given: the `.creds` file's path, the `NKey` seed, ….
        origin: String,
        /// What is wrong.
        problem: String,
    },
    /// No server URL was given.
    #[error("no NATS server given")]
    NoServers,
    /// A server URL does not parse.
    #[error("NATS server {server} is not a valid URL: {problem}")]
    InvalidServer {
        /// The URL, user info hidden.
        server: String,
        /// What is wrong.
        problem: String,
    },
    /// The TLS handshake failed: the server's certificate is not trusted (no or the wrong CA), it
    /// does not speak TLS, or it wants a client certificate.
    #[error("TLS with NATS at {servers} failed: {problem}")]
    TlsHandshake {
        /// The servers tried, user info hidden.
        servers: String,
        /// The TLS error.
        problem: String,
    },
    /// The server refused the credentials (or their absence).
    #[error("NATS at {servers} refused the credentials: {problem}")]
    Refused {
        /// The servers tried, user info hidden.
        servers: String,
        /// The server's answer.
        problem: String,
    },
    /// No server could be reached (DNS, connection refused, timeout).
    #[error("cannot connect to NATS at {servers}: {problem}")]
    Unreachable {
        /// The servers tried, user info hidden.
        servers: String,
        /// What failed.
        problem: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_in_urls_is_hidden() {
        assert_eq!(redact("nats://u:p@host:4222"), "nats://***@host:4222");
        assert_eq!(redact("u:p@host:4222"), "***@host:4222");
        assert_eq!(redact("tls://host:4222"), "tls://host:4222");
        let shown = format!(
            "{:?}",
            NatsConnection::new(["nats://u:pw-123@host:4222"]).user_and_password("u", "pw-456")
        );
        assert!(!shown.contains("pw-"), "{shown}");
    }

    #[test]
    fn a_malformed_seed_is_refused_before_connecting() {
        let error = NatsConnection::new(["nats:4222"])
            .nkey("SUnot-a-seed")
            .options()
            .unwrap_err();
        assert!(matches!(error, NatsConnectError::BadCredentials { .. }));
        assert!(!error.to_string().contains("not-a-seed"), "{error}");
    }

    #[test]
    fn no_server_is_an_error() {
        let none: [&str; 0] = [];
        assert!(matches!(
            NatsConnection::new(none).server_addrs(),
            Err(NatsConnectError::NoServers)
        ));
    }
}
