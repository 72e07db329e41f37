//! Connection settings for a real Kafka cluster: bootstrap brokers, TLS and SASL, building the
//! [`rskafka::client::Client`] that the [`KafkaPublisher`](super::KafkaPublisher) and the
//! consumers take.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use dtx_postgres::kafka::{KafkaConnection, KafkaPublisher, SaslMechanism};
//! use dtx_postgres::tls::Tls;
//!
//! let client = KafkaConnection::new(["kafka-1.internal:9093", "kafka-2.internal:9093"])
//!     .tls(Tls::new().ca_file("/etc/dtx/kafka-ca.pem"))
//!     .sasl(SaslMechanism::ScramSha512, "orders", std::env::var("KAFKA_PASSWORD")?)
//!     .connect()
//!     .await?;
//! let publisher = KafkaPublisher::new(client, "orders.events");
//! # Ok(())
//! # }
//! ```

use crate::tls::{Secret, Tls, TlsError};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The default bound on connecting (and on each broker request's retries).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A SASL mechanism the Kafka client authenticates with.
///
/// ```
/// use dtx_postgres::kafka::SaslMechanism;
///
/// assert_eq!(SaslMechanism::ScramSha256.to_string(), "SCRAM-SHA-256");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaslMechanism {
    /// `PLAIN`: the password is sent as is; use it over TLS only.
    Plain,
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
}

impl fmt::Display for SaslMechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        })
    }
}

#[derive(Clone, Debug)]
struct Sasl {
    mechanism: SaslMechanism,
    user: String,
    password: Secret,
}

/// How to connect to a Kafka cluster: bootstrap brokers, TLS and SASL credentials;
/// [`connect`](Self::connect) gives the client.
///
/// The password never shows in `Debug` output nor in a [`KafkaConnectError`].
///
/// ```
/// use dtx_postgres::kafka::{KafkaConnection, SaslMechanism};
///
/// let connection = KafkaConnection::new(["kafka:9093"])
///     .sasl(SaslMechanism::ScramSha256, "orders", "s3cr3t");
/// assert!(!format!("{connection:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, Debug)]
pub struct KafkaConnection {
    brokers: Vec<String>,
    tls: Option<Tls>,
    sasl: Option<Sasl>,
    client_id: String,
    timeout: Duration,
}

impl KafkaConnection {
    /// Settings for the cluster reached through `brokers` (`host:port` bootstrap addresses):
    /// plaintext, no SASL, client id `dtx`, a 10 s timeout.
    ///
    /// ```
    /// let connection = dtx_postgres::kafka::KafkaConnection::new(["kafka-1:9092", "kafka-2:9092"]);
    /// ```
    pub fn new<I, S>(brokers: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            brokers: brokers.into_iter().map(Into::into).collect(),
            tls: None,
            sasl: None,
            client_id: "dtx".to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Connects over TLS with these settings (CA certificates, client certificate for mutual
    /// TLS); the broker's host name is checked against its certificate.
    ///
    /// ```
    /// use dtx_postgres::kafka::KafkaConnection;
    /// use dtx_postgres::tls::Tls;
    ///
    /// let connection = KafkaConnection::new(["kafka:9093"]).tls(Tls::new().ca_file("ca.pem"));
    /// ```
    #[must_use]
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticates with SASL `mechanism` as `user`.
    ///
    /// ```
    /// use dtx_postgres::kafka::{KafkaConnection, SaslMechanism};
    ///
    /// let connection = KafkaConnection::new(["kafka:9093"])
    ///     .sasl(SaslMechanism::Plain, "orders", "s3cr3t");
    /// ```
    #[must_use]
    pub fn sasl(
        mut self,
        mechanism: SaslMechanism,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.sasl = Some(Sasl {
            mechanism,
            user: user.into(),
            password: Secret::new(password),
        });
        self
    }

    /// The client id the brokers see (default `dtx`).
    ///
    /// ```
    /// let connection = dtx_postgres::kafka::KafkaConnection::new(["kafka:9092"]).client_id("orders");
    /// ```
    #[must_use]
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// Bounds connecting and the retries of each broker request (default 10 s): the client gives
    /// up on an unreachable broker, or one refusing the credentials, after it.
    ///
    /// ```
    /// let connection = dtx_postgres::kafka::KafkaConnection::new(["kafka:9092"])
    ///     .timeout(std::time::Duration::from_secs(3));
    /// ```
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The brokers, as given.
    ///
    /// ```
    /// let connection = dtx_postgres::kafka::KafkaConnection::new(["kafka:9092"]);
    /// assert_eq!(connection.brokers(), ["kafka:9092"]);
    /// ```
    pub fn brokers(&self) -> &[String] {
        &self.brokers
    }

    /// The [`ClientBuilder`] these settings make, with the TLS files read and checked: set
    /// options of your own before building the client with it.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = dtx_postgres::kafka::KafkaConnection::new(["kafka:9092"])
    ///     .builder()?
    ///     .max_message_size(16 * 1024 * 1024)
    ///     .build()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// No broker given, or unusable TLS material ([`KafkaConnectError::Tls`]).
    pub fn builder(&self) -> Result<ClientBuilder, KafkaConnectError> {
        if self.brokers.is_empty() {
            return Err(KafkaConnectError::NoBrokers);
        }
        let backoff = rskafka::BackoffConfig {
            deadline: Some(self.timeout),
            ..rskafka::BackoffConfig::default()
        };
        let mut builder = ClientBuilder::new(self.brokers.clone())
            .client_id(self.client_id.as_str())
            .backoff_config(backoff);
        if let Some(tls) = &self.tls {
            builder = builder.tls_config(Arc::new(tls.client_config()?));
        }
        if let Some(sasl) = &self.sasl {
            let credentials =
                Credentials::new(sasl.user.clone(), sasl.password.expose().to_owned());
            builder = builder.sasl_config(match sasl.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            });
        }
        Ok(builder)
    }

    /// Connects: reads the TLS material, then reaches a broker and reads the cluster's metadata,
    /// within the timeout.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), dtx_postgres::kafka::KafkaConnectError> {
    /// let client = dtx_postgres::kafka::KafkaConnection::new(["127.0.0.1:9092"]).connect().await?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// Everything [`builder`](Self::builder) refuses, and within the timeout no broker reached
    /// ([`KafkaConnectError::Unreachable`]), TLS failing ([`KafkaConnectError::TlsHandshake`]) or
    /// the credentials refused ([`KafkaConnectError::Refused`]).
    pub async fn connect(&self) -> Result<Client, KafkaConnectError> {
        let builder = self.builder()?;
        let brokers = self.brokers.join(",");
        match tokio::time::timeout(self.timeout, builder.build()).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(self.refused(brokers, &e.to_string())),
            Err(_) => Err(KafkaConnectError::Unreachable {
                brokers,
                problem: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    /// The error a failed connect becomes. rskafka retries every failure until the deadline and
    /// then reports them as text, so the kind is read from its message.
    fn refused(&self, brokers: String, problem: &str) -> KafkaConnectError {
        let lower = problem.to_ascii_lowercase();
        if self.sasl.is_some() && lower.contains("sasl") {
            KafkaConnectError::Refused {
                brokers,
                problem: problem.to_owned(),
            }
        } else if self.tls.is_some()
            && ["certificate", "tls", "handshake", "invalid hostname"]
                .iter()
                .any(|word| lower.contains(word))
        {
            KafkaConnectError::TlsHandshake {
                brokers,
                problem: problem.to_owned(),
            }
        } else {
            KafkaConnectError::Unreachable {
                brokers,
                problem: problem.to_owned(),
            }
        }
    }
}

/// Why a [`KafkaConnection`] could not connect. No variant holds the password.
///
/// ```no_run
/// # async fn demo() {
/// use dtx_postgres::kafka::{KafkaConnectError, KafkaConnection, SaslMechanism};
///
/// let connection = KafkaConnection::new(["kafka:9093"]).sasl(SaslMechanism::Plain, "u", "wrong");
/// if let Err(KafkaConnectError::Refused { brokers, .. }) = connection.connect().await {
///     eprintln!("{brokers} refused the credentials");
/// }
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaConnectError {
    /// The TLS settings are unusable (a CA file that cannot be read, PEM that does not parse).
    #[error("Kafka TLS settings: {0}")]
    Tls(#[from] TlsError),
    /// No bootstrap broker was given.
    #[error("no Kafka broker given")]
    NoBrokers,
    /// TLS failed: the broker's certificate is not trusted (no or the wrong CA), its name does
    /// not match, or the broker does not speak TLS.
    #[error("TLS with Kafka at {brokers} failed: {problem}")]
    TlsHandshake {
        /// The bootstrap brokers.
        brokers: String,
        /// The client's report.
        problem: String,
    },
    /// SASL authentication failed: the broker refused the credentials or the mechanism.
    #[error("Kafka at {brokers} refused the SASL credentials: {problem}")]
    Refused {
        /// The bootstrap brokers.
        brokers: String,
        /// The client's report.
        problem: String,
    },
    /// No broker could be reached, or it did not answer within the timeout.
    #[error("cannot connect to Kafka at {brokers}: {problem}")]
    Unreachable {
        /// The bootstrap brokers.
        brokers: String,
        /// The client's report.
        problem: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_broker_is_an_error() {
        let none: [&str; 0] = [];
        assert!(matches!(
            KafkaConnection::new(none).builder(),
            Err(KafkaConnectError::NoBrokers)
        ));
    }

    #[test]
    fn an_unreadable_ca_is_named_before_connecting() {
        let error = KafkaConnection::new(["kafka:9093"])
            .tls(Tls::new().ca_file("/nonexistent/kafka-ca.pem"))
            .builder()
            .unwrap_err();
        assert!(matches!(
            error,
            KafkaConnectError::Tls(TlsError::Unreadable { .. })
        ));
        assert!(
            error.to_string().contains("/nonexistent/kafka-ca.pem"),
            "{error}"
        );
    }
}
