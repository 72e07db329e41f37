//! TLS settings of the NATS and Kafka connections (features `nats`, `kafka`):
//! [`Tls`] names the CA certificates to trust and, for mutual TLS, the client's certificate and
//! key, as PEM files or PEM text; [`Tls::client_config`] loads them into a rustls
//! [`ClientConfig`](rustls::ClientConfig) on the `ring` provider.
//!
//! Everything is read and checked when the connection is built, so a wrong path or a broken PEM
//! is a [`TlsError`] naming the file, never a failed handshake later. The client key never shows
//! in `Debug` output nor in an error.
//!
//! ```no_run
//! use dtx_postgres::tls::Tls;
//!
//! // Trust the cluster's own CA, and authenticate with a client certificate (mutual TLS).
//! let tls = Tls::new()
//!     .ca_file("/etc/dtx/ca.pem")
//!     .client_cert_files("/etc/dtx/client.pem", "/etc/dtx/client-key.pem");
//! let config = tls.client_config()?;
//! # Ok::<(), dtx_postgres::tls::TlsError>(())
//! ```

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where TLS material comes from: a PEM file, or PEM text.
#[derive(Clone)]
enum Source {
    File(PathBuf),
    Text(Secret),
}

impl Source {
    fn read(&self, what: PemItem) -> Result<Vec<u8>, TlsError> {
        match self {
            Self::File(path) => std::fs::read(path).map_err(|source| TlsError::Unreadable {
                what,
                path: path.clone(),
                source,
            }),
            Self::Text(text) => Ok(text.expose().as_bytes().to_vec()),
        }
    }

    /// Where the item came from, for an error: the path, or "given as text".
    fn origin(&self) -> String {
        match self {
            Self::File(path) => path.display().to_string(),
            Self::Text(_) => "given as text".to_owned(),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => f.debug_tuple("File").field(path).finish(),
            Self::Text(_) => f.write_str("Text(..)"),
        }
    }
}

/// A password, token, seed or key: its `Debug` output is `"***"`.
#[derive(Clone)]
pub(crate) struct Secret(String);

impl Secret {
    pub(crate) fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// TLS settings of a connection: the CA certificates the server's certificate must chain to, and
/// an optional client certificate and key (mutual TLS).
///
/// With no CA given, the system's CA certificates are trusted (as for a public cloud service);
/// with one or more, only those (as for a cluster with its own CA).
///
/// ```
/// use dtx_postgres::tls::Tls;
///
/// let tls = Tls::new().ca_file("ca.pem").client_cert_files("client.pem", "client-key.pem");
/// // The key's path shows, never PEM text.
/// let shown = format!("{tls:?}");
/// assert!(shown.contains("client-key.pem"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Tls {
    cas: Vec<Source>,
    client: Option<(Source, Source)>,
}

impl Tls {
    /// TLS trusting the system's CA certificates, without a client certificate.
    ///
    /// ```
    /// let tls = dtx_postgres::tls::Tls::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the CA certificate(s) in the PEM file at `path` (every certificate in it); call it
    /// again to trust more files. The file is read by [`client_config`](Self::client_config).
    ///
    /// ```
    /// let tls = dtx_postgres::tls::Tls::new().ca_file("/etc/ssl/private-ca.pem");
    /// ```
    #[must_use]
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.cas.push(Source::File(path.as_ref().to_owned()));
        self
    }

    /// Trusts the CA certificate(s) in `pem` (PEM text, every certificate in it).
    ///
    /// ```
    /// # let ca_pem = String::new();
    /// let tls = dtx_postgres::tls::Tls::new().ca_pem(ca_pem);
    /// ```
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<String>) -> Self {
        self.cas.push(Source::Text(Secret::new(pem)));
        self
    }

    /// Authenticates with the client certificate (chain) in the PEM file `cert` and its private
    /// key (PKCS#8, PKCS#1 or SEC1) in the PEM file `key`: mutual TLS.
    ///
    /// ```
    /// let tls = dtx_postgres::tls::Tls::new()
    ///     .ca_file("ca.pem")
    ///     .client_cert_files("client.pem", "client-key.pem");
    /// ```
    #[must_use]
    pub fn client_cert_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.client = Some((
            Source::File(cert.as_ref().to_owned()),
            Source::File(key.as_ref().to_owned()),
        ));
        self
    }

    /// Authenticates with the client certificate (chain) and private key given as PEM text:
    /// mutual TLS. The key never shows in `Debug` output.
    ///
    /// ```
    /// # let (cert_pem, key_pem) = (String::new(), String::new());
    /// let tls = dtx_postgres::tls::Tls::new().client_cert_pem(cert_pem, key_pem);
    /// assert!(!format!("{tls:?}").contains("PRIVATE KEY"));
    /// ```
    #[must_use]
    pub fn client_cert_pem(mut self, cert: impl Into<String>, key: impl Into<String>) -> Self {
        self.client = Some((
            Source::Text(Secret::new(cert)),
            Source::Text(Secret::new(key)),
        ));
        self
    }

    /// Reads and checks the certificates and key, and builds the rustls client configuration
    /// (on the `ring` provider, TLS 1.2 and 1.3).
    ///
    /// ```no_run
    /// let config = dtx_postgres::tls::Tls::new().ca_file("ca.pem").client_config()?;
    /// # Ok::<(), dtx_postgres::tls::TlsError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// A file that cannot be read, PEM that does not parse or holds no certificate (or key), a
    /// certificate or key rustls refuses, or no system CA certificates when none is given.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let roots = self.roots()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rejected {
                what: "the TLS protocol versions",
                problem: e.to_string(),
            })?
            .with_root_certificates(roots);
        match &self.client {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain = certificates(cert, PemItem::ClientCertificate)?;
                let key = private_key(key)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::Rejected {
                        what: "the client certificate and key",
                        problem: e.to_string(),
                    })
            }
        }
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        if self.cas.is_empty() {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                return Err(TlsError::NoSystemRoots {
                    problem: native
                        .errors
                        .first()
                        .map_or_else(|| "none found".to_owned(), ToString::to_string),
                });
            }
            return Ok(roots);
        }
        for source in &self.cas {
            for cert in certificates(source, PemItem::CaCertificate)? {
                roots.add(cert).map_err(|e| TlsError::BadPem {
                    what: PemItem::CaCertificate,
                    origin: source.origin(),
                    problem: e.to_string(),
                })?;
            }
        }
        Ok(roots)
    }
}

/// Every certificate in `source`; at least one.
fn certificates(source: &Source, what: PemItem) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = source.read(what)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::BadPem {
            what,
            origin: source.origin(),
            problem: describe(&e),
        })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem {
            what,
            origin: source.origin(),
            problem: "no CERTIFICATE section in it".to_owned(),
        });
    }
    Ok(certs)
}

/// The first private key in `source`.
fn private_key(source: &Source) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = PemItem::ClientKey;
    let bytes = source.read(what)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::BadPem {
        what,
        origin: source.origin(),
        problem: match e {
            pem::Error::NoItemsFound => "no PRIVATE KEY section in it".to_owned(),
            other => describe(&other),
        },
    })
}

/// A PEM error in words that quote nothing of the file (it may be a key).
fn describe(error: &pem::Error) -> String {
    match error {
        pem::Error::MissingSectionEnd { .. } => "a section has no END line".to_owned(),
        pem::Error::IllegalSectionStart { .. } => "a BEGIN line is malformed".to_owned(),
        pem::Error::Base64Decode(_) => "a section is not valid base64".to_owned(),
        pem::Error::NoItemsFound => "nothing usable in it".to_owned(),
        pem::Error::Io(e) => e.to_string(),
        _ => "malformed PEM".to_owned(),
    }
}

/// What a piece of TLS material is, in a [`TlsError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemItem {
    /// A CA certificate to trust.
    CaCertificate,
    /// The client's certificate (chain), for mutual TLS.
    ClientCertificate,
    /// The client's private key, for mutual TLS.
    ClientKey,
}

impl fmt::Display for PemItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::CaCertificate => "CA certificate",
            Self::ClientCertificate => "client certificate",
            Self::ClientKey => "client key",
        })
    }
}

/// Why [`Tls::client_config`] failed; no variant holds key material.
///
/// ```
/// use dtx_postgres::tls::{PemItem, Tls, TlsError};
///
/// let error = Tls::new().ca_file("/nonexistent/ca.pem").client_config().unwrap_err();
/// assert!(matches!(error, TlsError::Unreadable { what: PemItem::CaCertificate, .. }));
/// assert!(error.to_string().contains("/nonexistent/ca.pem"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Unreadable {
        /// What the file should hold.
        what: PemItem,
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// PEM that does not parse, or holds nothing of what it should.
    #[error("the {what} ({origin}) is not usable PEM: {problem}")]
    BadPem {
        /// What the PEM should hold.
        what: PemItem,
        /// The file's path, or "given as text".
        origin: String,
        /// What is wrong, quoting nothing of the PEM.
        problem: String,
    },
    /// rustls refused the settings (a key that does not fit its certificate, say).
    #[error("{what} are not accepted: {problem}")]
    Rejected {
        /// What was refused.
        what: &'static str,
        /// rustls's reason.
        problem: String,
    },
    /// No CA was given and the system has no CA certificates to trust.
    #[error(
        "no CA certificate given and none found on the system ({problem}): name the server's CA \
         with Tls::ca_file or Tls::ca_pem"
    )]
    NoSystemRoots {
        /// Why none was found.
        problem: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_text_without_a_certificate_is_named() {
        let error = Tls::new().ca_pem("hello").client_config().unwrap_err();
        assert!(
            matches!(&error, TlsError::BadPem { what: PemItem::CaCertificate, origin, .. } if origin == "given as text"),
            "{error:?}"
        );
    }

    #[test]
    fn a_broken_key_is_reported_without_its_content() {
        let key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n";
        let tls = Tls::new().client_cert_pem("-----BEGIN CERTIFICATE-----\n", key);
        assert!(!format!("{tls:?}").contains("c2VjcmV0"));
        let error = tls.client_config().unwrap_err();
        let shown = format!("{error} {error:?}");
        assert!(!shown.contains("c2VjcmV0"), "{shown}");
    }
}
