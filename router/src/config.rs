//! The router's configuration: a TOML file plus `ANYBROKER_*` environment overrides.
//!
//! Every problem is reported at load time as one `ConfigInvalid` error naming the key
//! and what was expected.

use std::collections::BTreeMap;
use std::path::Path;

use anybroker_brokers::{BrokerConfig, BrokerKind, Error, Result, RetryPolicy};
use serde::{Deserialize, Serialize};

/// Prefix of environment overrides; `__` separates keys, e.g.
/// `ANYBROKER_CHANNELS__ALARM_TO_LOG__BROKER=redis`.
pub const ENV_PREFIX: &str = "ANYBROKER_";

/// The whole file. See the README's config reference.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct RouterConfig {
    /// Broker for channels without their own `broker`. Optional.
    pub default_broker: Option<String>,
    /// Defaults for every channel.
    pub defaults: ChannelDefaults,
    /// Brokers by name.
    pub brokers: BTreeMap<String, BrokerConfig>,
    /// Per-channel settings by wire name.
    pub channels: BTreeMap<String, ChannelConfig>,
}

/// `[defaults]`: settings every channel inherits unless it sets its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[non_exhaustive]
pub struct ChannelDefaults {
    /// Retry policy. Default: 3 attempts, 2 s, ×2, at most 10 s.
    pub retry: RetryPolicy,
    /// Deliveries a consumer holds unsettled at once (its in-flight window). Default 256.
    pub prefetch: usize,
    /// Consumer group of handlers that name none. Default `"default"`.
    pub group: String,
    /// Consumers (group members) each handler registration runs. Default 1.
    pub consumers: usize,
}

impl Default for ChannelDefaults {
    fn default() -> Self {
        ChannelDefaults {
            retry: RetryPolicy::default(),
            prefetch: 256,
            group: "default".into(),
            consumers: 1,
        }
    }
}

/// `[channels."<name>"]`: one channel's route and settings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// Name of the broker (a key of `[brokers]`) carrying this channel. Default:
    /// `default_broker`.
    pub broker: Option<String>,
    /// Retry policy. Default: `[defaults].retry`.
    pub retry: Option<RetryPolicy>,
    /// In-flight window. Default: `[defaults].prefetch`.
    pub prefetch: Option<usize>,
    /// Consumer group of handlers that name none. Default: `[defaults].group`.
    pub group: Option<String>,
    /// Consumers per handler registration. Default: `[defaults].consumers`.
    pub consumers: Option<usize>,
    /// Groups to provision when the channel is opened (at `start` for a channel with a
    /// table of its own, at first use for one a pattern matches), so what is published
    /// before their first member subscribes waits for them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub provision_groups: Vec<String>,
    /// The broker this channel is moving away from (a key of `[brokers]`), while it
    /// moves to `broker`: publishes go to `broker`, and handlers consume from both
    /// until the old one is drained (see [`MessageRouter::move_status`]).
    ///
    /// [`MessageRouter::move_status`]: crate::MessageRouter::move_status
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_from: Option<String>,
    /// While moving: handle what is published on the new broker only once the old one
    /// is drained for the group and no router on the old config announces the channel
    /// there, so every key's messages are handled in order across the move (new
    /// messages wait meanwhile). Where the old broker cannot tell presence (Redis
    /// pub/sub, core NATS keep nothing to move anyway), the instances on the old config
    /// must be gone before it reads drained. Default false: both at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub moving_keeps_order: bool,
    /// While moving: how many of the ids a group handled last this process remembers,
    /// so a copy of a message on both brokers is handled once (about 100 bytes each).
    /// Default 10,000; 0 remembers none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving_dedup_window: Option<usize>,
}

/// A config inside an application's own: `#[derive(Deserialize)] struct AppConfig {
/// messaging: anybroker::RouterConfig }`, read with serde from any format (TOML, JSON,
/// figment, config-rs), with the same checks and messages as [`RouterConfig::load`]
/// (environment overrides are `load`'s alone).
///
/// ```
/// #[derive(serde::Deserialize)]
/// struct AppConfig {
///     name: String,
///     messaging: anybroker::RouterConfig,
/// }
/// let app: AppConfig = toml::from_str(
///     r#"
///     name = "alarms"
///     [messaging]
///     default_broker = "memory"
///     [messaging.brokers.memory]
///     kind = "memory"
///     "#,
/// )
/// .unwrap();
/// assert_eq!(app.messaging.default_broker.as_deref(), Some("memory"));
/// ```
impl<'de> Deserialize<'de> for RouterConfig {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let mut table = toml::Table::deserialize(deserializer)?;
        inherit_default_retry(&mut table);
        RouterConfig::from_table(table).map_err(|e| serde::de::Error::custom(e.message()))
    }
}

impl RouterConfig {
    /// An empty config, to build in code: add brokers, a default broker, channels.
    ///
    /// ```
    /// use anybroker::{BrokerConfig, RouterConfig};
    /// use anybroker::redis::RedisConfig;
    /// let url = anybroker::SecretUrl::parse("redis://127.0.0.1:6379").unwrap();
    /// let config = RouterConfig::new()
    ///     .with_broker("memory", BrokerConfig::Memory(Default::default()))
    ///     .with_broker("redis", BrokerConfig::Redis(RedisConfig::new(url)))
    ///     .with_default_broker("memory");
    /// config.validate().unwrap();
    /// ```
    pub fn new() -> Self {
        RouterConfig::default()
    }

    /// Adds (or replaces) the broker named `name`.
    pub fn with_broker(mut self, name: impl Into<String>, broker: BrokerConfig) -> Self {
        self.brokers.insert(name.into(), broker);
        self
    }

    /// Sets the broker of channels without their own.
    pub fn with_default_broker(mut self, name: impl Into<String>) -> Self {
        self.default_broker = Some(name.into());
        self
    }

    /// Sets the settings of `channel`.
    pub fn with_channel(mut self, channel: impl Into<String>, config: ChannelConfig) -> Self {
        self.channels.insert(channel.into(), config);
        self
    }

    /// Sets the defaults every channel inherits.
    pub fn with_defaults(mut self, defaults: ChannelDefaults) -> Self {
        self.defaults = defaults;
        self
    }
}

/// The file as written, before brokers are interpreted by kind.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    default_broker: Option<String>,
    #[serde(default)]
    defaults: ChannelDefaults,
    #[serde(default)]
    brokers: BTreeMap<String, toml::Table>,
    #[serde(default)]
    channels: BTreeMap<String, ChannelConfig>,
}

/// A config error, and the environment variable that caused it, if one did.
struct ParseError {
    error: Error,
    var: Option<String>,
}

/// The top-level keys a variable may set.
/// Handled ids a moving channel's group remembers unless its config says otherwise.
const DEFAULT_MOVING_DEDUP_WINDOW: usize = 10_000;

const TOP_LEVEL_KEYS: [&str; 4] = ["default_broker", "defaults", "brokers", "channels"];

/// A channel's `retry` table inherits, key by key, what `[defaults].retry` sets and it
/// does not: `retry = { attempts = 6 }` keeps the defaults' backoff. (Keys neither sets
/// take the built-in defaults when the policy is read.) Tables of the wrong type are
/// left alone for deserialization to report.
fn inherit_default_retry(table: &mut toml::Table) {
    let Some(toml::Value::Table(defaults)) =
        table.get("defaults").and_then(|d| d.get("retry")).cloned()
    else {
        return;
    };
    let Some(toml::Value::Table(channels)) = table.get_mut("channels") else {
        return;
    };
    for (_, channel) in channels.iter_mut() {
        if let Some(toml::Value::Table(retry)) = channel.get_mut("retry") {
            for (key, value) in &defaults {
                retry.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
    }
}

/// The prefix of a `[channels."<prefix>*"]` key, which gives its settings to every
/// channel whose name starts with the prefix; `None` for a channel's own key.
pub(crate) fn channel_pattern_prefix(key: &str) -> Option<&str> {
    key.strip_suffix('*')
}

/// Channel names match config keys ignoring case and `.`/`-`/`_` differences, so
/// environment variables (which cannot hold dots) can name them.
pub(crate) fn normalize_channel(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '.' | '-' => '_',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

impl RouterConfig {
    /// Reads `path` and applies the process's `ANYBROKER_*` environment overrides.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        Self::parse(&text, std::env::vars()).map_err(|e| match e.var {
            // The variable is named in the message; the file is not to blame.
            Some(_) => e.error,
            None => Error::config(format!(
                "config file {}: {}",
                path.display(),
                e.error.message()
            )),
        })
    }

    /// Parses TOML text, without environment overrides.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        Self::from_toml_with_env(text, std::iter::empty())
    }

    /// Parses TOML text and applies the `ANYBROKER_*` variables among `vars`. An error
    /// a variable caused names it.
    pub fn from_toml_with_env(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        Self::parse(text, vars).map_err(|e| e.error)
    }

    fn parse(
        text: &str,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> std::result::Result<Self, Box<ParseError>> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Box::new(ParseError {
                error: Error::config(format!("not valid TOML: {e}")),
                var: None,
            })
        })?;
        // Where each variable wrote, to name it in an error about that key.
        let mut overridden: Vec<(String, String)> = Vec::new();
        for (name, value) in vars {
            if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                let key = apply_override(&mut table, &name, rest, &value).map_err(|error| {
                    Box::new(ParseError {
                        error,
                        var: Some(name.clone()),
                    })
                })?;
                overridden.push((key, name));
            }
        }
        inherit_default_retry(&mut table);
        Self::from_table(table).map_err(|error| {
            let message = error.message();
            let var = overridden.iter().find_map(|(key, var)| {
                let rest = message.strip_prefix(key.as_str())?;
                (rest.starts_with(':') || rest.starts_with('.')).then(|| var.clone())
            });
            Box::new(match var {
                Some(var) => ParseError {
                    error: Error::config(format!("{message} (set by environment variable {var})")),
                    var: Some(var),
                },
                None => ParseError { error, var: None },
            })
        })
    }

    fn from_table(table: toml::Table) -> Result<Self> {
        let raw: RawConfig =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                Error::config(format!(
                    "{}: {}",
                    display_path(e.path()),
                    e.inner().message()
                ))
            })?;
        let mut brokers = BTreeMap::new();
        for (name, table) in raw.brokers {
            let broker = parse_broker(&name, table)?;
            brokers.insert(name, broker);
        }
        let config = RouterConfig {
            default_broker: raw.default_broker,
            defaults: raw.defaults,
            brokers,
            channels: raw.channels,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks routes and values; every error names its key. Loading runs it; a config
    /// built in code is checked by [`RouterBuilder::start`](crate::RouterBuilder::start).
    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.default_broker {
            self.check_route("default_broker", name)?;
        }
        check_channel_settings(
            "defaults",
            Some(&self.defaults.retry),
            Some(self.defaults.prefetch),
            Some(self.defaults.consumers),
        )?;
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (channel, c) in &self.channels {
            let key = format!("channels.{}", quote_key(channel));
            let stem = channel_pattern_prefix(channel).unwrap_or(channel);
            if stem.contains('*') {
                return Err(Error::config(format!(
                    "{key}: '*' may only end a channel pattern (\"orders.*\": every channel whose name starts with \"orders.\")"
                )));
            }
            if let Some(other) = seen.insert(normalize_channel(channel), channel) {
                return Err(Error::config(format!(
                    "{key}: same channel as channels.{} (names match ignoring case, '.', '-' and '_'); keep one",
                    quote_key(other)
                )));
            }
            match &c.broker {
                Some(b) => self.check_route(&format!("{key}.broker"), b)?,
                None if self.default_broker.is_none() => {
                    return Err(Error::config(format!(
                        "{key}.broker: missing, and there is no default_broker; expected the name of one of the configured brokers ({})",
                        self.broker_names()
                    )))
                }
                None => {}
            }
            check_channel_settings(&key, c.retry.as_ref(), c.prefetch, c.consumers)?;
            if let Some(old) = &c.moving_from {
                self.check_route(&format!("{key}.moving_from"), old)?;
                let new = c.broker.as_deref().or(self.default_broker.as_deref());
                if new == Some(old.as_str()) {
                    return Err(Error::config(format!(
                        "{key}.moving_from: {old:?} is the broker the channel moves to; expected the broker it moves away from"
                    )));
                }
            }
            if let Some(bad) = c.provision_groups.iter().find(|g| g.trim().is_empty()) {
                return Err(Error::config(format!(
                    "{key}.provision_groups: expected group names, got {bad:?}"
                )));
            }
        }
        Ok(())
    }

    fn check_route(&self, key: &str, broker: &str) -> Result<()> {
        let Some(config) = self.brokers.get(broker) else {
            return Err(Error::config(format!(
                "{key}: unknown broker {broker:?}; expected one of the configured brokers ({})",
                self.broker_names()
            )));
        };
        let kind = config.kind();
        if !kind.is_built() {
            return Err(Error::config(format!(
                "{key}: broker {broker:?} has kind \"{kind}\", which needs the cargo feature \"{kind}\" of anybroker; this build does not have it"
            )));
        }
        Ok(())
    }

    fn broker_names(&self) -> String {
        if self.brokers.is_empty() {
            return "none configured under [brokers]".into();
        }
        self.brokers
            .keys()
            .map(|k| format!("{k:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The settings of `channel`, found ignoring case and `.`/`-`/`_` differences: its
    /// own table, else the table of the longest prefix pattern (`"orders.*"`) it
    /// matches, for channels named at run time.
    pub fn channel(&self, channel: &str) -> Option<&ChannelConfig> {
        if let Some(c) = self.channels.get(channel) {
            return Some(c);
        }
        let wanted = normalize_channel(channel);
        let mut best: Option<(usize, &ChannelConfig)> = None;
        for (key, c) in &self.channels {
            match channel_pattern_prefix(key) {
                None if normalize_channel(key) == wanted => return Some(c),
                Some(prefix)
                    if wanted.starts_with(&normalize_channel(prefix))
                        && best.is_none_or(|(len, _)| prefix.len() > len) =>
                {
                    best = Some((prefix.len(), c));
                }
                _ => {}
            }
        }
        best.map(|(_, c)| c)
    }

    /// The broker name carrying `channel`: its own route, else `default_broker`.
    pub fn broker_for(&self, channel: &str) -> Result<&str> {
        match self.channel(channel).and_then(|c| c.broker.as_deref()) {
            Some(b) => Ok(b),
            None => self.default_broker.as_deref().ok_or_else(|| {
                Error::config(format!(
                    "channels.{}: channel has no route and there is no default_broker; add [channels.{}] broker = \"...\" or default_broker",
                    quote_key(channel),
                    quote_key(channel)
                ))
                .with_channel(channel)
            }),
        }
    }

    /// The retry policy of `channel`.
    pub fn retry_for(&self, channel: &str) -> RetryPolicy {
        self.channel(channel)
            .and_then(|c| c.retry)
            .unwrap_or(self.defaults.retry)
    }

    /// The in-flight window of `channel`.
    pub fn prefetch_for(&self, channel: &str) -> usize {
        self.channel(channel)
            .and_then(|c| c.prefetch)
            .unwrap_or(self.defaults.prefetch)
    }

    /// The default group of `channel`'s handlers.
    pub fn group_for(&self, channel: &str) -> &str {
        self.channel(channel)
            .and_then(|c| c.group.as_deref())
            .unwrap_or(&self.defaults.group)
    }

    /// The groups provisioned when `channel` is opened.
    pub fn provision_groups_for(&self, channel: &str) -> &[String] {
        self.channel(channel)
            .map(|c| c.provision_groups.as_slice())
            .unwrap_or_default()
    }

    /// The broker `channel` is moving away from, if it is moving.
    pub fn moving_from_for(&self, channel: &str) -> Option<&str> {
        self.channel(channel).and_then(|c| c.moving_from.as_deref())
    }

    /// Whether `channel`, while moving, handles the new broker's messages only once the
    /// old broker is drained.
    pub fn moving_keeps_order_for(&self, channel: &str) -> bool {
        self.channel(channel).is_some_and(|c| c.moving_keeps_order)
    }

    /// How many handled ids a group of moving `channel` remembers.
    pub fn moving_dedup_window_for(&self, channel: &str) -> usize {
        self.channel(channel)
            .and_then(|c| c.moving_dedup_window)
            .unwrap_or(DEFAULT_MOVING_DEDUP_WINDOW)
    }

    /// Consumers per handler registration on `channel`.
    pub fn consumers_for(&self, channel: &str) -> usize {
        self.channel(channel)
            .and_then(|c| c.consumers)
            .unwrap_or(self.defaults.consumers)
    }

    /// The first broker (by name) of `kind`, preferring the one `channel` routes to.
    pub fn broker_of_kind(&self, kind: BrokerKind, channel: &str) -> Result<&str> {
        if let Ok(name) = self.broker_for(channel) {
            if self.brokers.get(name).map(|b| b.kind()) == Some(kind) {
                return Ok(name);
            }
        }
        self.brokers
            .iter()
            .find(|(_, b)| b.kind() == kind)
            .map(|(n, _)| n.as_str())
            .ok_or_else(|| {
                Error::config(format!(
                    "brokers: no broker of kind \"{kind}\" is configured; configured: {}",
                    self.broker_names()
                ))
            })
    }
}

pub(crate) fn check_channel_settings(
    key: &str,
    retry: Option<&RetryPolicy>,
    prefetch: Option<usize>,
    consumers: Option<usize>,
) -> Result<()> {
    if let Some(r) = retry {
        r.validate()
            .map_err(|e| Error::config(format!("{key}.{e}")))?;
    }
    if prefetch == Some(0) {
        return Err(Error::config(format!(
            "{key}.prefetch: expected at least 1"
        )));
    }
    if consumers == Some(0) {
        return Err(Error::config(format!(
            "{key}.consumers: expected at least 1"
        )));
    }
    Ok(())
}

fn parse_broker(name: &str, mut table: toml::Table) -> Result<BrokerConfig> {
    let key = format!("brokers.{}", quote_key(name));
    let kinds = BrokerKind::ALL.map(|k| k.as_str()).join(", ");
    let kind = match table.remove("kind") {
        Some(toml::Value::String(k)) => k,
        Some(other) => {
            return Err(Error::config(format!(
                "{key}.kind: expected a string, one of: {kinds}; got {}",
                other.type_str()
            )))
        }
        None => {
            return Err(Error::config(format!(
                "{key}.kind: missing; expected one of: {kinds}"
            )))
        }
    };
    let reader = TableAt {
        key: &key,
        value: toml::Value::Table(table),
    };
    let Some(parsed) = BrokerConfig::read(&kind, reader) else {
        return Err(Error::config(format!(
            "{key}.kind: unknown kind {kind:?}; expected one of: {kinds}"
        )));
    };
    let parsed = parsed?;
    parsed
        .validate()
        .map_err(|e| Error::config(format!("{key}.{e}")))?;
    Ok(parsed)
}

/// A broker's table, read as its backend's config with errors naming the key.
struct TableAt<'a> {
    key: &'a str,
    value: toml::Value,
}

impl anybroker_brokers::backends::TableReader for TableAt<'_> {
    type Error = Error;
    fn read<T: serde::de::DeserializeOwned>(self) -> Result<T> {
        de(self.key, self.value)
    }
}

fn de<T: serde::de::DeserializeOwned>(key: &str, value: toml::Value) -> Result<T> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = display_path(e.path());
        let at = if inner == "." {
            key.to_string()
        } else {
            format!("{key}.{inner}")
        };
        Error::config(format!("{at}: {}", e.inner().message()))
    })
}

fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

fn display_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let parts: Vec<String> = path
        .iter()
        .filter_map(|s| match s {
            Segment::Map { key } => Some(quote_key(key)),
            Segment::Seq { index } => Some(index.to_string()),
            Segment::Enum { variant } => Some(quote_key(variant)),
            Segment::Unknown => None,
        })
        .collect();
    if parts.is_empty() {
        ".".into()
    } else {
        parts.join(".")
    }
}

/// Applies `ANYBROKER_A__B__C=value`: walks the table by keys matched ignoring case and
/// `.`/`-`/`_`, creating tables where missing. The value is read as a TOML value when it
/// is one (number, boolean, inline table), else as a string.
fn apply_override(table: &mut toml::Table, var: &str, path: &str, value: &str) -> Result<String> {
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(String::is_empty) {
        return Err(Error::config(format!(
            "environment variable {var}: empty key segment; expected ANYBROKER_KEY__SUBKEY"
        )));
    }
    if !TOP_LEVEL_KEYS.contains(&segments[0].as_str()) {
        return Err(Error::config(format!(
            "environment variable {var}: {ENV_PREFIX} variables set config keys, and {:?} is not one; expected {}",
            segments[0],
            TOP_LEVEL_KEYS
                .map(|k| format!("{ENV_PREFIX}{}…", k.to_ascii_uppercase()))
                .join(", ")
        )));
    }
    let mut key = Vec::new();
    let mut current = table;
    for (i, segment) in segments.iter().enumerate() {
        let existing = current
            .keys()
            .find(|k| normalize_channel(k) == *segment)
            .cloned()
            .unwrap_or_else(|| segment.clone());
        key.push(quote_key(&existing));
        if i + 1 == segments.len() {
            current.insert(existing, parse_env_value(value));
            return Ok(key.join("."));
        }
        let entry = current
            .entry(existing.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => {
                return Err(Error::config(format!(
                    "environment variable {var}: key {existing:?} holds a value, not a table"
                )))
            }
        };
    }
    Ok(key.join("."))
}

fn parse_env_value(value: &str) -> toml::Value {
    format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const DEFAULTS: &str = r#"
        default_broker = "memory"
        [defaults]
        retry = { initial = "20s", max = "5m" }
        [brokers.memory]
        kind = "memory"
    "#;

    #[test]
    fn a_channels_retry_inherits_the_defaults_key_by_key() {
        let config = RouterConfig::from_toml_str(&format!(
            "{DEFAULTS}\n[channels.x]\nretry = {{ attempts = 6 }}\n[channels.y]\nretry = {{ initial = \"1s\" }}\n"
        ))
        .unwrap();
        let x = config.retry_for("x");
        assert_eq!(
            (x.attempts, x.initial, x.multiplier, x.max),
            (6, Duration::from_secs(20), 2.0, Duration::from_secs(300))
        );
        let y = config.retry_for("y");
        assert_eq!(
            (y.attempts, y.initial, y.max),
            (3, Duration::from_secs(1), Duration::from_secs(300))
        );
        // A channel without retry settings takes the defaults whole.
        assert_eq!(config.retry_for("z"), config.defaults.retry);
    }

    #[test]
    fn a_retry_set_from_the_environment_inherits_the_defaults_too() {
        let vars = [(
            "ANYBROKER_CHANNELS__X__RETRY__ATTEMPTS".to_string(),
            "6".to_string(),
        )];
        let config = RouterConfig::from_toml_with_env(DEFAULTS, vars).unwrap();
        let x = config.retry_for("x");
        assert_eq!(
            (x.attempts, x.initial, x.max),
            (6, Duration::from_secs(20), Duration::from_secs(300))
        );
    }
}
