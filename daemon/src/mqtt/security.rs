//! TLS and credentials for the broker connection: built once from `[mqtt]` and `[mqtt.tls]`
//! when the configuration is checked, so a missing file, a PEM without a certificate or a key
//! that does not fit is reported by `check-config` with the key at fault (exit 2), not at the
//! first connection attempt.
//!
//! TLS is rustls with the `ring` crypto provider (plain C and assembly, cross-compiles to
//! aarch64 and armv7 with just the target's gcc), TLS 1.2 and 1.3. The password is read from a
//! file, never from the configuration text; relative paths are looked up in
//! `$CREDENTIALS_DIRECTORY` when systemd provides one (`LoadCredential=`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{MqttOptions, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::{invalid, ConfigError, MqttSettings};

/// What the MQTT options need beyond host and port: a TLS client configuration and
/// credentials, both optional. `Debug` never shows the password.
#[derive(Clone, Default)]
pub struct MqttSecurity {
    tls: Option<Arc<ClientConfig>>,
    credentials: Option<(String, String)>,
}

impl std::fmt::Debug for MqttSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttSecurity")
            .field("tls", &self.tls.is_some())
            .field("username", &self.credentials.as_ref().map(|(u, _)| u))
            .finish_non_exhaustive()
    }
}

impl MqttSecurity {
    /// Sets the transport (TLS or TCP) and the credentials on `o`.
    pub fn apply(&self, o: &mut MqttOptions) {
        if let Some(tls) = &self.tls {
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
        }
        if let Some((user, password)) = &self.credentials {
            o.set_credentials(user.clone(), password.clone());
        }
    }

    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    pub fn username(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(u, _)| u.as_str())
    }
}

/// Reads and checks the password file, the CA file and the client certificate and key named by
/// `mqtt`. Relative paths are taken from `credentials_dir` when given.
pub fn load(
    mqtt: &MqttSettings,
    credentials_dir: Option<&Path>,
) -> Result<MqttSecurity, ConfigError> {
    let credentials = credentials(mqtt, credentials_dir)?;
    let t = &mqtt.tls;
    let tls = if t.enabled {
        Some(Arc::new(client_config(mqtt, credentials_dir)?))
    } else {
        for (key, v) in [
            ("mqtt.tls.ca_file", &t.ca_file),
            ("mqtt.tls.client_cert_file", &t.client_cert_file),
            ("mqtt.tls.client_key_file", &t.client_key_file),
        ] {
            if !v.is_empty() {
                return Err(invalid(
                    key,
                    "is set but mqtt.tls.enabled is false (the connection would not use TLS)",
                ));
            }
        }
        None
    };
    Ok(MqttSecurity { tls, credentials })
}

/// A relative path inside the credentials directory, when there is one.
fn resolve(path: &str, credentials_dir: Option<&Path>) -> PathBuf {
    let p = Path::new(path);
    match credentials_dir {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

fn credentials(
    mqtt: &MqttSettings,
    credentials_dir: Option<&Path>,
) -> Result<Option<(String, String)>, ConfigError> {
    if mqtt.password_file.is_empty() {
        return Ok((!mqtt.username.is_empty()).then(|| (mqtt.username.clone(), String::new())));
    }
    const KEY: &str = "mqtt.password_file";
    if mqtt.username.is_empty() {
        return Err(invalid(
            KEY,
            "is set but mqtt.username is empty (MQTT 3.1.1 sends a password only with a username)",
        ));
    }
    let path = resolve(&mqtt.password_file, credentials_dir);
    let text = std::fs::read_to_string(&path)
        .map_err(|e| cannot_read(KEY, &mqtt.password_file, &path, &e, credentials_dir))?;
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        return Err(invalid(KEY, format!("{} is empty", path.display())));
    }
    Ok(Some((mqtt.username.clone(), password)))
}

fn client_config(
    mqtt: &MqttSettings,
    credentials_dir: Option<&Path>,
) -> Result<ClientConfig, ConfigError> {
    let t = &mqtt.tls;
    let roots = if t.ca_file.is_empty() {
        system_roots()?
    } else {
        let key = "mqtt.tls.ca_file";
        let certs = read_certs(key, &t.ca_file, credentials_dir)?;
        let mut roots = RootCertStore::empty();
        for c in certs {
            roots
                .add(c)
                .map_err(|e| invalid(key, format!("{}: {e}", t.ca_file)))?;
        }
        roots
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("mqtt.tls", e))?
        .with_root_certificates(roots);
    match (t.client_cert_file.is_empty(), t.client_key_file.is_empty()) {
        (true, true) => Ok(builder.with_no_client_auth()),
        (false, false) => {
            let certs = read_certs(
                "mqtt.tls.client_cert_file",
                &t.client_cert_file,
                credentials_dir,
            )?;
            let key = read_key(&t.client_key_file, credentials_dir)?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                invalid(
                    "mqtt.tls.client_key_file",
                    format!("does not fit mqtt.tls.client_cert_file: {e}"),
                )
            })
        }
        (false, true) => Err(invalid(
            "mqtt.tls.client_key_file",
            "must be set with mqtt.tls.client_cert_file",
        )),
        (true, false) => Err(invalid(
            "mqtt.tls.client_cert_file",
            "must be set with mqtt.tls.client_key_file",
        )),
    }
}

/// The error for a secret or certificate file that cannot be read. A relative path read
/// outside systemd is the usual cause: the README's setup names the file relative to
/// `$CREDENTIALS_DIRECTORY`, which only the service has, so `check-config` run from a shell
/// looks in the working directory; the message says so and how to check the service's view.
fn cannot_read(
    key: &str,
    configured: &str,
    path: &Path,
    e: &std::io::Error,
    credentials_dir: Option<&Path>,
) -> ConfigError {
    let mut reason = format!("cannot read {}: {e}", path.display());
    let missing = e.kind() == std::io::ErrorKind::NotFound;
    if missing && credentials_dir.is_none() && Path::new(configured).is_relative() {
        reason.push_str(
            ". A relative path is looked up in $CREDENTIALS_DIRECTORY, which systemd sets for \
             the service's LoadCredential=; it is not set here, so the path was taken from the \
             working directory. To check the service's configuration from a shell, run \
             `CREDENTIALS_DIRECTORY=/etc/sparsewatch/credentials sparsewatch check-config FILE` \
             (the directory LoadCredential= reads from, each file named as its credential), \
             or give an absolute path",
        );
    }
    invalid(key, reason)
}

/// Every certificate in a PEM file; at least one.
fn read_certs(
    key: &str,
    configured: &str,
    credentials_dir: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let path = &resolve(configured, credentials_dir);
    std::fs::metadata(path).map_err(|e| cannot_read(key, configured, path, &e, credentials_dir))?;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            format!(
                "{} holds no PEM certificate (BEGIN CERTIFICATE)",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn read_key(
    configured: &str,
    credentials_dir: Option<&Path>,
) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let key = "mqtt.tls.client_key_file";
    let path = &resolve(configured, credentials_dir);
    std::fs::metadata(path).map_err(|e| cannot_read(key, configured, path, &e, credentials_dir))?;
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        invalid(
            key,
            format!(
                "{}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {e}",
                path.display()
            ),
        )
    })
}

fn system_roots() -> Result<RootCertStore, ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_string(), |e| e.to_string());
        return Err(invalid(
            "mqtt.tls.ca_file",
            format!("is empty and the system trust store gave no CA certificate ({why}); name a CA file"),
        ));
    }
    Ok(roots)
}

/// What to check when a connection attempt failed for a reason the configuration can fix: the
/// broker refused the login, or the TLS handshake failed.
pub fn failure_hint(e: &rumqttc::ConnectionError) -> Option<&'static str> {
    use rumqttc::{ConnectReturnCode as Code, ConnectionError as E};
    match e {
        E::ConnectionRefused(Code::BadUserNamePassword | Code::NotAuthorized) => Some(
            "the broker refused the login: check mqtt.username and the password in mqtt.password_file",
        ),
        E::Tls(_) => Some(
            "TLS failed: the broker's certificate must chain to mqtt.tls.ca_file (or the system \
             trust store) and name mqtt.host; with mutual TLS the broker must trust \
             mqtt.tls.client_cert_file; and mqtt.port must be the broker's TLS listener (usually \
             8883, not a plain one such as 1883)",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::failure_hint;

    /// TLS to a plain listener ends in a reset while the handshake is read, not in a certificate
    /// error: the hint must name the port as well as the certificates.
    #[test]
    fn a_tls_failure_hint_names_the_certificates_and_the_port() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(reset));
        let hint = failure_hint(&e).expect("a hint");
        assert!(hint.contains("mqtt.tls.ca_file"), "{hint}");
        assert!(hint.contains("mqtt.port"), "{hint}");
        let refused =
            rumqttc::ConnectionError::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized);
        assert!(failure_hint(&refused).unwrap().contains("mqtt.username"));
    }
}
