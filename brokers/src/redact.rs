//! Keeping secrets out of Debug output, logs and serialized config: a secret reads in
//! from config as written and never writes back out in clear.

use std::fmt;

/// A connection URL that prints, and serializes, with its password replaced by `***`.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct SecretUrl(url::Url);

impl serde::Serialize for SecretUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl SecretUrl {
    /// Parses a URL; the error says what is wrong, without echoing the URL (it may hold
    /// a password).
    pub fn parse(s: &str) -> Result<Self, String> {
        url::Url::parse(s)
            .map(SecretUrl)
            .map_err(|e| format!("not a valid URL ({e})"))
    }

    /// The full URL, password included: for connecting only, never for printing.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// The parsed URL.
    pub fn url(&self) -> &url::Url {
        &self.0
    }

    /// The URL with the password replaced by `***`.
    pub fn redacted(&self) -> String {
        let mut u = self.0.clone();
        if u.password().is_some() {
            let _ = u.set_password(Some("***"));
        }
        u.to_string()
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
