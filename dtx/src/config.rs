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
#[derive(Debug, Clone, PartialEq, Eq)]
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
