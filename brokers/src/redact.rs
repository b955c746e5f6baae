//! Keeping secrets out of Debug output, logs and serialized config: a secret reads in
//! from config as written and never writes back out in clear.

use std::fmt;
use std::ops::Range;

/// A connection URL (`scheme://[user[:password]@]host[:port][/path][?query]`) that
/// prints, and serializes, with its secret replaced by `***`: the password, or a lone
/// user part (NATS reads `nats://token@host` as a token).
///
/// Parsing checks the shape every broker URL shares (scheme, host, port); the broker's
/// client reads the rest when it connects. It keeps the URL as written, the scheme
/// lower-cased.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct SecretUrl {
    text: String,
    scheme_len: usize,
    secret: Option<Range<usize>>,
}

impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl SecretUrl {
    /// Parses a URL; the error says what is wrong, without echoing the URL (it may hold
    /// a password).
    pub fn parse(s: &str) -> Result<Self, String> {
        Self::parse_parts(s).map_err(|why| format!("not a valid URL ({why})"))
    }

    fn parse_parts(s: &str) -> Result<Self, &'static str> {
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("it contains whitespace or a control character");
        }
        let scheme_len = s.find("://").ok_or("expected scheme://host")?;
        let scheme = &s[..scheme_len];
        let mut scheme_chars = scheme.chars();
        let scheme_ok = scheme_chars.next().is_some_and(|c| c.is_ascii_alphabetic())
            && scheme_chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
        if !scheme_ok {
            return Err(
                "the scheme is empty or has a character other than letters, digits, +, - and .",
            );
        }
        let authority_start = scheme_len + 3;
        let rest = &s[authority_start..];
        let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        let (secret, host_port) = match authority.rfind('@') {
            Some(at) => {
                let user_info = &authority[..at];
                let secret = match user_info.find(':') {
                    Some(colon) => colon + 1..at,
                    None => 0..at,
                };
                let secret = (!secret.is_empty())
                    .then(|| authority_start + secret.start..authority_start + secret.end);
                (secret, &authority[at + 1..])
            }
            None => (None, authority),
        };
        let port = if let Some(bracketed) = host_port.strip_prefix('[') {
            let close = bracketed
                .find(']')
                .ok_or("an IPv6 host lacks its closing ]")?;
            let after = &bracketed[close + 1..];
            if close == 0 {
                return Err("the host is empty");
            }
            match after.strip_prefix(':') {
                Some(port) => Some(port),
                None if after.is_empty() => None,
                None => return Err("expected :port after the IPv6 host"),
            }
        } else {
            let (host, port) = match host_port.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (host_port, None),
            };
            if host.is_empty() {
                return Err("the host is empty");
            }
            if host.contains(['[', ']', '<', '>', '"', '\\', '^', '`', '{', '|', '}']) {
                return Err("the host has a character a host name cannot have");
            }
            port
        };
        if let Some(port) = port {
            if port.parse::<u16>().is_err() {
                return Err("the port is not a number from 0 to 65535");
            }
        }
        let mut text = s.to_owned();
        text[..scheme_len].make_ascii_lowercase();
        Ok(SecretUrl {
            text,
            scheme_len,
            secret,
        })
    }

    /// The full URL, password included: for connecting only, never for printing.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The scheme, lower-cased (`redis`, `nats`, `amqps`, …).
    pub fn scheme(&self) -> &str {
        &self.text[..self.scheme_len]
    }

    /// The URL with its secret replaced by `***`.
    pub fn redacted(&self) -> String {
        match &self.secret {
            Some(secret) => format!(
                "{}{REDACTED}{}",
                &self.text[..secret.start],
                &self.text[secret.end..]
            ),
            None => self.text.clone(),
        }
    }
}

impl TryFrom<String> for SecretUrl {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        SecretUrl::parse(&s)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// A password, token or other secret string: Debug prints, and Serialize writes, `***`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// What a secret serializes as.
pub(crate) const REDACTED: &str = "***";

impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret itself: for connecting only, never for printing.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redacted(url: &str) -> String {
        SecretUrl::parse(url).unwrap().redacted()
    }

    #[test]
    fn only_the_secret_is_redacted() {
        assert_eq!(
            redacted("amqp://guest:hunter2@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redacted("nats://s3cr3t@host:4222"), "nats://***@host:4222");
        assert_eq!(
            redacted("redis://:pw@[::1]:6379/0"),
            "redis://:***@[::1]:6379/0"
        );
        assert_eq!(
            redacted("redis://a:p@ss@h"),
            "redis://a:***@h",
            "the last @ ends it"
        );
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("redis://h/0?user=a@b"), "redis://h/0?user=a@b");
        assert_eq!(SecretUrl::parse("REDISS://h").unwrap().scheme(), "rediss");
    }

    #[test]
    fn malformed_urls_are_refused_with_the_reason() {
        for (url, why) in [
            ("127.0.0.1:6379", "scheme://host"),
            ("://h", "scheme"),
            ("1redis://h", "scheme"),
            ("redis://", "host is empty"),
            ("redis://u:p@", "host is empty"),
            ("redis://[::1", "closing ]"),
            ("redis://[::1]x", ":port"),
            ("redis://h:port", "port"),
            ("redis://h:70000", "port"),
            ("redis://h x", "whitespace"),
            ("redis://h|x", "host"),
        ] {
            let e = SecretUrl::parse(url).unwrap_err();
            assert!(
                e.starts_with("not a valid URL") && e.contains(why),
                "{url}: {e}"
            );
        }
    }

    #[test]
    fn password_never_printed() {
        let u = SecretUrl::parse("amqp://guest:hunter2@127.0.0.1:5672/%2f").unwrap();
        assert!(!format!("{u:?}").contains("hunter2"));
        assert!(!format!("{u}").contains("hunter2"));
        assert!(u.expose().contains("hunter2"));
        assert!(!format!("{:?}", Secret::new("hunter2")).contains("hunter2"));
        let err = SecretUrl::parse("redis://user:hunter2@[bad").unwrap_err();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
