//! The TLS file settings Redis and NATS share, checked once at load time.

use std::path::PathBuf;

/// Checks `tls_ca`, `tls_client_cert`, `tls_client_key`: each given file exists, a
/// client certificate comes with its key, and, when `plain_url_error` is given (the URL
/// is not a TLS one and TLS files make no sense there), none is set.
pub(crate) fn validate_tls_files(
    ca: &Option<PathBuf>,
    client_cert: &Option<PathBuf>,
    client_key: &Option<PathBuf>,
    plain_url_error: Option<&str>,
) -> Result<(), String> {
    let files = [
        ("tls_ca", ca),
        ("tls_client_cert", client_cert),
        ("tls_client_key", client_key),
    ];
    for (key, path) in files {
        if let Some(p) = path {
            if let Some(why) = plain_url_error {
                return Err(format!("{key}: {why}"));
            }
            if !p.is_file() {
                return Err(format!("{key}: {} is not a readable file", p.display()));
            }
        }
    }
    if client_cert.is_some() != client_key.is_some() {
        return Err(
            "tls_client_cert: give both tls_client_cert and tls_client_key, or neither".into(),
        );
    }
    Ok(())
}
