//! The `[kafka]` section: librdkafka properties passed through, and the named security keys
//! of `[kafka.security]` turned into librdkafka's.
//!
//! Owns [`KafkaSection`], [`KafkaSecurity`], [`Tls`], [`Sasl`] and [`Mechanism`]. The security
//! protocol follows from what is configured: `[kafka.security.tls]` present → TLS,
//! `[kafka.security.sasl]` present → SASL, both → SASL over TLS, neither → plaintext.
//! Invariants: a passthrough property that carries a secret is refused (secrets come from
//! `*_file` / `*_env` keys); a passthrough property the named keys own is refused when the
//! named keys are used; hostname verification is on unless turned off by name. Must not:
//! keep a resolved secret anywhere but the `ClientConfig` it configures.

use std::collections::BTreeMap;
use std::path::PathBuf;

use rdkafka::ClientConfig;
use serde::Deserialize;

use crate::ConnectError;
use crate::secret::read_secret;

/// librdkafka properties that hold secrets: refused in the passthrough.
const SECRET_PROPERTIES: [&str; 7] = [
    "sasl.password",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "sasl.oauthbearer.client.secret",
    "sasl.oauthbearer.config",
    "ssl_key",
];

/// librdkafka properties set by `[kafka.security]`: refused in the passthrough when it is used.
const SECURITY_PROPERTIES: [&str; 16] = [
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.endpoint.identification.algorithm",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.kerberos.keytab",
    "sasl.kerberos.principal",
    "sasl.kerberos.service.name",
    "sasl.oauthbearer.scope",
    "enable.ssl.certificate.verification",
];

/// `[kafka]`: the named security keys and any other librdkafka property (passed through).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct KafkaSection {
    /// `[kafka.security]`: TLS and SASL. Default: plaintext, no authentication.
    pub security: KafkaSecurity,
    /// Any other librdkafka client property (`"socket.keepalive.enable" = "true"`), as
    /// strings. Properties holding secrets are refused: use the `*_file` / `*_env` keys.
    #[serde(flatten)]
    pub properties: BTreeMap<String, String>,
}

/// `[kafka.security]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `[kafka.security.tls]`: connect over TLS. Default none (plaintext).
    pub tls: Option<Tls>,
    /// `[kafka.security.sasl]`: authenticate with SASL. Default none.
    pub sasl: Option<Sasl>,
}

/// `[kafka.security.tls]`: TLS, and mutual TLS with a client certificate.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// PEM file of the CA certificates the brokers' certificates are verified with. Default:
    /// the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM file of the client certificate (mutual TLS). Default none.
    pub cert_file: Option<PathBuf>,
    /// PEM file of the client certificate's private key (mutual TLS). Default none.
    pub key_file: Option<PathBuf>,
    /// File holding the private key's password, if it is encrypted. Default none.
    pub key_password_file: Option<PathBuf>,
    /// Environment variable holding the private key's password. Default none.
    pub key_password_env: Option<String>,
    /// Check that the broker's certificate names the host connected to. Default true; turn
    /// off only for brokers reached by an address their certificates do not name.
    pub verify_hostname: bool,
}

impl Default for Tls {
    fn default() -> Self {
        Tls {
            ca_file: None,
            cert_file: None,
            key_file: None,
            key_password_file: None,
            key_password_env: None,
            verify_hostname: true,
        }
    }
}

/// SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Mechanism {
    /// `PLAIN`: user name and password (use it over TLS only).
    #[serde(rename = "PLAIN")]
    Plain,
    /// `SCRAM-SHA-256`.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// `SCRAM-SHA-512`.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    /// `OAUTHBEARER` with OIDC client credentials: librdkafka fetches and refreshes the token.
    #[serde(rename = "OAUTHBEARER")]
    OauthBearer,
    /// `GSSAPI` (Kerberos), with a keytab.
    #[serde(rename = "GSSAPI")]
    Gssapi,
}

impl Mechanism {
    fn as_str(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::OauthBearer => "OAUTHBEARER",
            Mechanism::Gssapi => "GSSAPI",
        }
    }
}

/// `[kafka.security.sasl]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sasl {
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER` or `GSSAPI`. Required.
    pub mechanism: Mechanism,
    /// User name (PLAIN, SCRAM). Default none.
    #[serde(default)]
    pub username: Option<String>,
    /// File holding the password (PLAIN, SCRAM). Default none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the password (PLAIN, SCRAM). Default none.
    #[serde(default)]
    pub password_env: Option<String>,
    /// OIDC token endpoint URL (OAUTHBEARER). Default none.
    #[serde(default)]
    pub oidc_token_endpoint: Option<String>,
    /// OIDC client id (OAUTHBEARER). Default none.
    #[serde(default)]
    pub oidc_client_id: Option<String>,
    /// File holding the OIDC client secret (OAUTHBEARER). Default none.
    #[serde(default)]
    pub oidc_client_secret_file: Option<PathBuf>,
    /// Environment variable holding the OIDC client secret (OAUTHBEARER). Default none.
    #[serde(default)]
    pub oidc_client_secret_env: Option<String>,
    /// OIDC scope (OAUTHBEARER). Default none.
    #[serde(default)]
    pub oidc_scope: Option<String>,
    /// Kerberos service name of the brokers (GSSAPI). Default `kafka`.
    #[serde(default)]
    pub kerberos_service_name: Option<String>,
    /// Kerberos principal of this client (GSSAPI). Default `kafkaclient`.
    #[serde(default)]
    pub kerberos_principal: Option<String>,
    /// Keytab file (GSSAPI). Default none (the ticket cache).
    #[serde(default)]
    pub kerberos_keytab: Option<PathBuf>,
}

fn invalid(reason: impl Into<String>) -> ConnectError {
    ConnectError::Invalid(reason.into())
}

fn existing(key: &str, path: &PathBuf) -> Result<String, ConnectError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(path.display().to_string()),
        Ok(_) => Err(ConnectError::File {
            key: key.into(),
            path: path.clone(),
            reason: "not a file".into(),
        }),
        Err(e) => Err(ConnectError::File {
            key: key.into(),
            path: path.clone(),
            reason: e.kind().to_string(),
        }),
    }
}

impl KafkaSection {
    /// Checks the keys without reading secrets: what a client configuration would refuse.
    pub fn validate(&self) -> Result<(), ConnectError> {
        for key in self.properties.keys() {
            let lower = key.to_ascii_lowercase();
            let secret_like = ["password", "secret", "jaas", "user.info", ".pem"]
                .iter()
                .any(|p| lower.contains(p));
            if secret_like || SECRET_PROPERTIES.contains(&lower.as_str()) {
                return Err(invalid(format!(
                    "kafka.{key}: secrets are not accepted by value; use the [kafka.security] keys with _file or _env"
                )));
            }
            if self.security.is_set() && SECURITY_PROPERTIES.contains(&key.as_str()) {
                return Err(invalid(format!(
                    "kafka.{key} is set by [kafka.security]; remove it from [kafka]"
                )));
            }
        }
        if let Some(tls) = &self.security.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return Err(invalid(
                "kafka.security.tls: cert_file and key_file go together (mutual TLS)",
            ));
        }
        if let Some(sasl) = &self.security.sasl {
            sasl.validate()?;
        }
        Ok(())
    }

    /// Sets the passthrough properties and the security keys on `c`, reading the secrets.
    pub fn apply(&self, c: &mut ClientConfig) -> Result<(), ConnectError> {
        self.validate()?;
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        self.security.apply(c)
    }

    /// A client configuration for `brokers` with this section applied.
    pub fn client_config(&self, brokers: &str) -> Result<ClientConfig, ConnectError> {
        let mut c = ClientConfig::new();
        self.apply(&mut c)?;
        c.set("bootstrap.servers", brokers);
        Ok(c)
    }
}

impl KafkaSecurity {
    /// Whether any named security key is used.
    pub fn is_set(&self) -> bool {
        self.tls.is_some() || self.sasl.is_some()
    }

    /// librdkafka's `security.protocol` for what is configured.
    pub fn protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        }
    }

    fn apply(&self, c: &mut ClientConfig) -> Result<(), ConnectError> {
        if !self.is_set() {
            return Ok(());
        }
        c.set("security.protocol", self.protocol());
        if let Some(tls) = &self.tls {
            tls.apply(c)?;
        }
        if let Some(sasl) = &self.sasl {
            sasl.apply(c)?;
        }
        Ok(())
    }
}

impl Tls {
    fn apply(&self, c: &mut ClientConfig) -> Result<(), ConnectError> {
        const K: &str = "kafka.security.tls";
        if let Some(ca) = &self.ca_file {
            c.set("ssl.ca.location", existing(&format!("{K}.ca_file"), ca)?);
        }
        if let (Some(cert), Some(key)) = (&self.cert_file, &self.key_file) {
            c.set(
                "ssl.certificate.location",
                existing(&format!("{K}.cert_file"), cert)?,
            );
            c.set("ssl.key.location", existing(&format!("{K}.key_file"), key)?);
        }
        if let Some(pw) = read_secret(
            &format!("{K}.key_password"),
            self.key_password_file.as_ref(),
            self.key_password_env.as_deref(),
        )? {
            c.set("ssl.key.password", pw);
        }
        let algorithm = if self.verify_hostname {
            "https"
        } else {
            "none"
        };
        c.set("ssl.endpoint.identification.algorithm", algorithm);
        Ok(())
    }
}

impl Sasl {
    fn validate(&self) -> Result<(), ConnectError> {
        const K: &str = "kafka.security.sasl";
        let password = self.password_file.is_some() || self.password_env.is_some();
        match self.mechanism {
            Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                if self.username.is_none() || !password {
                    return Err(invalid(format!(
                        "{K}: {} needs username and password_file or password_env",
                        self.mechanism.as_str()
                    )));
                }
            }
            Mechanism::OauthBearer => {
                let secret =
                    self.oidc_client_secret_file.is_some() || self.oidc_client_secret_env.is_some();
                if self.oidc_token_endpoint.is_none() || self.oidc_client_id.is_none() || !secret {
                    return Err(invalid(format!(
                        "{K}: OAUTHBEARER needs oidc_token_endpoint, oidc_client_id and oidc_client_secret_file or oidc_client_secret_env"
                    )));
                }
            }
            Mechanism::Gssapi => {}
        }
        Ok(())
    }

    fn apply(&self, c: &mut ClientConfig) -> Result<(), ConnectError> {
        const K: &str = "kafka.security.sasl";
        c.set("sasl.mechanism", self.mechanism.as_str());
        match self.mechanism {
            Mechanism::Plain | Mechanism::ScramSha256 | Mechanism::ScramSha512 => {
                if let Some(user) = &self.username {
                    c.set("sasl.username", user);
                }
                let pw = read_secret(
                    &format!("{K}.password"),
                    self.password_file.as_ref(),
                    self.password_env.as_deref(),
                )?;
                if let Some(pw) = pw {
                    c.set("sasl.password", pw);
                }
            }
            Mechanism::OauthBearer => {
                c.set("sasl.oauthbearer.method", "oidc");
                if let Some(url) = &self.oidc_token_endpoint {
                    c.set("sasl.oauthbearer.token.endpoint.url", url);
                }
                if let Some(id) = &self.oidc_client_id {
                    c.set("sasl.oauthbearer.client.id", id);
                }
                if let Some(scope) = &self.oidc_scope {
                    c.set("sasl.oauthbearer.scope", scope);
                }
                let secret = read_secret(
                    &format!("{K}.oidc_client_secret"),
                    self.oidc_client_secret_file.as_ref(),
                    self.oidc_client_secret_env.as_deref(),
                )?;
                if let Some(secret) = secret {
                    c.set("sasl.oauthbearer.client.secret", secret);
                }
            }
            Mechanism::Gssapi => {
                if let Some(name) = &self.kerberos_service_name {
                    c.set("sasl.kerberos.service.name", name);
                }
                if let Some(p) = &self.kerberos_principal {
                    c.set("sasl.kerberos.principal", p);
                }
                if let Some(keytab) = &self.kerberos_keytab {
                    c.set(
                        "sasl.kerberos.keytab",
                        existing(&format!("{K}.kerberos_keytab"), keytab)?,
                    );
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        kafka: KafkaSection,
    }

    fn section(text: &str) -> KafkaSection {
        toml::from_str::<File>(text).expect("parses").kafka
    }

    fn get(c: &ClientConfig, k: &str) -> Option<String> {
        c.get(k).map(str::to_owned)
    }

    #[test]
    fn named_keys_become_librdkafka_properties_with_secrets_read() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = dir.path().join("c.pem");
        let key = dir.path().join("c.key");
        let pw = dir.path().join("pw");
        for f in [&ca, &cert, &key] {
            std::fs::write(f, "pem").unwrap();
        }
        std::fs::write(&pw, "s3cret\n").unwrap();
        let text = format!(
            "[kafka]\n\"socket.keepalive.enable\" = \"true\"\n[kafka.security.tls]\nca_file = {ca:?}\ncert_file = {cert:?}\nkey_file = {key:?}\n[kafka.security.sasl]\nmechanism = \"SCRAM-SHA-512\"\nusername = \"pgtrail\"\npassword_file = {pw:?}\n"
        );
        let s = section(&text);
        let c = s.client_config("b:9093").unwrap();
        assert_eq!(get(&c, "security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(get(&c, "sasl.mechanism").as_deref(), Some("SCRAM-SHA-512"));
        assert_eq!(get(&c, "sasl.password").as_deref(), Some("s3cret"));
        assert_eq!(get(&c, "socket.keepalive.enable").as_deref(), Some("true"));
        assert_eq!(
            get(&c, "ssl.endpoint.identification.algorithm").as_deref(),
            Some("https")
        );
        assert!(get(&c, "ssl.certificate.location").is_some());
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn protocol_follows_the_sections() {
        assert_eq!(section("").security.protocol(), "plaintext");
        assert_eq!(section("[kafka.security.tls]\n").security.protocol(), "ssl");
        let plain = "[kafka.security.sasl]\nmechanism = \"PLAIN\"\nusername = \"u\"\npassword_env = \"PGTRAIL_TEST_PW\"\n";
        assert_eq!(section(plain).security.protocol(), "sasl_plaintext");
        assert!(
            section("")
                .client_config("b")
                .unwrap()
                .get("security.protocol")
                .is_none()
        );
    }

    #[test]
    fn oidc_sets_librdkafkas_builtin_client_credentials_flow() {
        let text = "[kafka.security.sasl]\nmechanism = \"OAUTHBEARER\"\noidc_token_endpoint = \"https://idp/token\"\noidc_client_id = \"pgtrail\"\noidc_client_secret_file = \"/nonexistent/secret\"\noidc_scope = \"kafka\"\n";
        let s = section(text);
        s.validate().unwrap();
        let e = s.client_config("b").unwrap_err().to_string();
        assert!(e.contains("oidc_client_secret_file"), "{e}");
    }

    #[test]
    fn secrets_by_value_and_conflicts_are_refused() {
        let e = section("[kafka]\n\"sasl.password\" = \"hunter2\"\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("sasl.password") && !e.contains("hunter2"), "{e}");
        let e = section("[kafka]\n\"security.protocol\" = \"ssl\"\n[kafka.security.tls]\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("security.protocol"), "{e}");
        // Without named keys the passthrough may set the protocol itself.
        section("[kafka]\n\"security.protocol\" = \"ssl\"\n")
            .validate()
            .unwrap();
        let e = section("[kafka.security.sasl]\nmechanism = \"SCRAM-SHA-256\"\nusername = \"u\"\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("password_file"), "{e}");
        assert!(toml::from_str::<File>("[kafka.security.tls]\nca = \"x\"\n").is_err());
        assert!(toml::from_str::<File>("[kafka.security.sasl]\nmechanism = \"scram\"\n").is_err());
        let e = section("[kafka.security.tls]\ncert_file = \"/x\"\n")
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("key_file"), "{e}");
    }
}
