//! Configuration from the environment: [`DtxConfig::from_env`].

/// Settings read from environment variables; every field has a default.
///
/// | variable | field | default |
/// |---|---|---|
/// | `DATABASE_URL` | [`database_url`](Self::database_url) | none: the in-memory backend |
/// | `EVENT_STORE_SNAPSHOT_FREQUENCY` | [`snapshot_frequency`](Self::snapshot_frequency) | 100 (0 disables) |
/// | `EVENT_STORE_ENABLE_OUTBOX` | [`outbox_enabled`](Self::outbox_enabled) | false (`true`/`false`, `1`/`0`) |
/// | `SAGA_MAX_RETRIES` | [`saga_max_retries`](Self::saga_max_retries) | 3 |
/// | `SAGA_TIMEOUT_MINUTES` | [`saga_timeout_minutes`](Self::saga_timeout_minutes) | 60 |
/// | `IDEMPOTENCY_TTL_HOURS` | [`idempotency_ttl_hours`](Self::idempotency_ttl_hours) | 24 (how long idempotency records are kept) |
///
/// ```
/// use dtx::DtxConfig;
/// let config = DtxConfig::from_lookup(|name| match name {
///     "EVENT_STORE_SNAPSHOT_FREQUENCY" => Some("25".to_owned()),
///     _ => None,
/// })?;
/// assert_eq!(config.snapshot_frequency, 25);
/// assert!(config.database_url.is_none());
/// # Ok::<(), dtx::ConfigError>(())
/// ```
///
/// Its `Debug` output hides the database password (see [`redact_url`]).
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DtxConfig {
    /// PostgreSQL connection string; `None` selects the in-memory backend.
    pub database_url: Option<String>,
    /// Snapshot an aggregate every N events (`0` = never), unless the aggregate sets its own
    /// policy.
    pub snapshot_frequency: u64,
    /// Whether every append also puts its events in the outbox, in the same statement
    /// (see [`crate::outbox`]).
    pub outbox_enabled: bool,
    /// Retries of a failing saga step or compensation before the saga compensates (or, for a
    /// compensation, fails), unless the saga sets its own.
    pub saga_max_retries: u32,
    /// How long a saga may run before it compensates, unless the saga sets its own deadline.
    pub saga_timeout_minutes: u64,
    /// How long an idempotency record (and the result it stores) is kept, in hours: a key
    /// reused later runs again. See [`crate::idempotency`].
    pub idempotency_ttl_hours: u64,
}

impl Default for DtxConfig {
    fn default() -> Self {
        Self {
            database_url: None,
            snapshot_frequency: 100,
            outbox_enabled: false,
            saga_max_retries: 3,
            saga_timeout_minutes: 60,
            idempotency_ttl_hours: 24,
        }
    }
}

impl std::fmt::Debug for DtxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            database_url,
            snapshot_frequency,
            outbox_enabled,
            saga_max_retries,
            saga_timeout_minutes,
            idempotency_ttl_hours,
        } = self;
        f.debug_struct("DtxConfig")
            .field("database_url", &database_url.as_deref().map(redact_url))
            .field("snapshot_frequency", snapshot_frequency)
            .field("outbox_enabled", outbox_enabled)
            .field("saga_max_retries", saga_max_retries)
            .field("saga_timeout_minutes", saga_timeout_minutes)
            .field("idempotency_ttl_hours", idempotency_ttl_hours)
            .finish()
    }
}

/// A connection string with its password replaced by `***`, fit for logs: the password of a
/// URL's user info (`postgres://user:secret@host/db`), and any `password=` parameter of a URL
/// query or of a `key=value` connection string.
///
/// ```
/// # use dtx::config::redact_url;
/// assert_eq!(
///     redact_url("postgres://app:s3cret@db:5432/orders?sslmode=require&password=x"),
///     "postgres://app:***@db:5432/orders?sslmode=require&password=***"
/// );
/// assert_eq!(redact_url("host=db password='a b' user=app"), "host=db password=*** user=app");
/// ```
pub fn redact_url(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    if let Some(scheme_end) = url.find("://") {
        let (scheme, after) = url.split_at(scheme_end + 3);
        out.push_str(scheme);
        let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, path) = after.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((user_info, host)) => {
                match user_info.split_once(':') {
                    Some((user, _password)) => {
                        out.push_str(user);
                        out.push_str(":***");
                    }
                    None => out.push_str(user_info),
                }
                out.push('@');
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = path;
    }
    out.push_str(&redact_password_parameters(rest));
    out
}

/// Replaces the value of every `password=` parameter, separated by `&`, `?`, `;` or
/// whitespace, quoted or not.
fn redact_password_parameters(text: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.to_ascii_lowercase().find(KEY) {
        let starts_parameter = at == 0
            || rest[..at]
                .chars()
                .next_back()
                .is_some_and(|c| matches!(c, '&' | '?' | ';') || c.is_whitespace());
        let value_start = at + KEY.len();
        out.push_str(&rest[..value_start]);
        rest = &rest[value_start..];
        if !starts_parameter {
            continue;
        }
        let value_end = match rest.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(rest.len(), |end| end + 2),
            None => rest
                .find(|c: char| matches!(c, '&' | ';' | '#') || c.is_whitespace())
                .unwrap_or(rest.len()),
        };
        out.push_str("***");
        rest = &rest[value_end..];
    }
    out.push_str(rest);
    out
}

/// An environment variable with a value that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("environment variable {variable}={value:?} is invalid: expected {expected}")]
pub struct ConfigError {
    /// The variable.
    pub variable: &'static str,
    /// Its value.
    pub value: String,
    /// What would have been accepted.
    pub expected: &'static str,
}

impl DtxConfig {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration through a lookup function (for tests and other sources).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        Ok(Self {
            database_url: lookup("DATABASE_URL").filter(|url| !url.trim().is_empty()),
            snapshot_frequency: parse(
                &lookup,
                "EVENT_STORE_SNAPSHOT_FREQUENCY",
                "a whole number of events (0 disables snapshots)",
            )?
            .unwrap_or(defaults.snapshot_frequency),
            outbox_enabled: match lookup("EVENT_STORE_ENABLE_OUTBOX")
                .map(|v| v.trim().to_ascii_lowercase())
                .as_deref()
            {
                None | Some("") => defaults.outbox_enabled,
                Some("true" | "1" | "yes" | "on") => true,
                Some("false" | "0" | "no" | "off") => false,
                Some(_) => {
                    return Err(ConfigError {
                        variable: "EVENT_STORE_ENABLE_OUTBOX",
                        value: lookup("EVENT_STORE_ENABLE_OUTBOX").unwrap_or_default(),
                        expected: "true or false",
                    });
                }
            },
            saga_max_retries: parse(&lookup, "SAGA_MAX_RETRIES", "a whole number of retries")?
                .unwrap_or(defaults.saga_max_retries),
            saga_timeout_minutes: parse(
                &lookup,
                "SAGA_TIMEOUT_MINUTES",
                "a whole number of minutes",
            )?
            .unwrap_or(defaults.saga_timeout_minutes),
            idempotency_ttl_hours: match parse::<u64>(
                &lookup,
                "IDEMPOTENCY_TTL_HOURS",
                "a whole number of hours, at least 1",
            )? {
                Some(0) => {
                    return Err(ConfigError {
                        variable: "IDEMPOTENCY_TTL_HOURS",
                        value: "0".to_owned(),
                        expected: "a whole number of hours, at least 1",
                    });
                }
                hours => hours.unwrap_or(defaults.idempotency_ttl_hours),
            },
        })
    }

    /// [`idempotency_ttl_hours`](Self::idempotency_ttl_hours) as a duration.
    pub fn idempotency_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.idempotency_ttl_hours.saturating_mul(3600))
    }

    /// Sets the snapshot frequency.
    #[must_use]
    pub fn with_snapshot_frequency(mut self, every: u64) -> Self {
        self.snapshot_frequency = every;
        self
    }
}

fn parse<T: std::str::FromStr>(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    expected: &'static str,
) -> Result<Option<T>, ConfigError> {
    match lookup(variable) {
        None => Ok(None),
        Some(value) if value.trim().is_empty() => Ok(None),
        Some(value) => value.trim().parse().map(Some).map_err(|_| ConfigError {
            variable,
            value,
            expected,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_malformed_numbers_naming_the_variable() {
        let error = DtxConfig::from_lookup(|name| {
            (name == "EVENT_STORE_SNAPSHOT_FREQUENCY").then(|| "often".to_owned())
        })
        .unwrap_err();
        assert_eq!(error.variable, "EVENT_STORE_SNAPSHOT_FREQUENCY");
        assert!(error.to_string().contains("often"));
    }

    #[test]
    fn outbox_switch_reads_booleans() {
        let read = |value: &'static str| {
            DtxConfig::from_lookup(move |name| {
                (name == "EVENT_STORE_ENABLE_OUTBOX").then(|| value.to_owned())
            })
        };
        assert!(!DtxConfig::default().outbox_enabled);
        assert!(read("true").unwrap().outbox_enabled);
        assert!(read(" 1 ").unwrap().outbox_enabled);
        assert!(!read("false").unwrap().outbox_enabled);
        assert_eq!(
            read("maybe").unwrap_err().variable,
            "EVENT_STORE_ENABLE_OUTBOX"
        );
    }

    #[test]
    fn debug_hides_the_database_password() {
        for (url, shown) in [
            (
                "postgres://app:hunter2@db.internal:5432/orders",
                "postgres://app:***@db.internal:5432/orders",
            ),
            // a password with `@` and `:` in it (user info ends at the last `@`)
            (
                "postgres://app:hu:n@ter2@db/orders",
                "postgres://app:***@db/orders",
            ),
            (
                "postgresql://db/orders?user=app&password=hunter2&sslmode=require",
                "postgresql://db/orders?user=app&password=***&sslmode=require",
            ),
            (
                "host=db user=app PASSWORD='hunter2 x' dbname=orders",
                "host=db user=app PASSWORD=*** dbname=orders",
            ),
            ("postgres://app@db/orders", "postgres://app@db/orders"),
        ] {
            let config =
                DtxConfig::from_lookup(|name| (name == "DATABASE_URL").then(|| url.to_owned()))
                    .unwrap();
            let debug = format!("{config:?}");
            assert!(!debug.contains("hunter2"), "{debug}");
            assert!(debug.contains(shown), "{debug} should show {shown}");
            assert!(debug.contains("snapshot_frequency: 100"), "{debug}");
        }
    }

    #[test]
    fn defaults_apply_when_unset() {
        let config = DtxConfig::from_lookup(|_| None).unwrap();
        assert_eq!(config, DtxConfig::default());
        assert_eq!(config.snapshot_frequency, 100);
    }

    #[test]
    fn idempotency_ttl_in_hours_at_least_one() {
        let read = |value: &'static str| {
            DtxConfig::from_lookup(move |name| {
                (name == "IDEMPOTENCY_TTL_HOURS").then(|| value.to_owned())
            })
        };
        assert_eq!(DtxConfig::default().idempotency_ttl_hours, 24);
        let config = read("48").unwrap();
        assert_eq!(
            config.idempotency_ttl(),
            std::time::Duration::from_secs(48 * 3600)
        );
        assert_eq!(read("0").unwrap_err().variable, "IDEMPOTENCY_TTL_HOURS");
        assert_eq!(read("a day").unwrap_err().variable, "IDEMPOTENCY_TTL_HOURS");
    }
}
