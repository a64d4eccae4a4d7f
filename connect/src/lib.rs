//! Connection settings both binaries share: the `[kafka]` section (librdkafka properties and
//! the named `[kafka.security]` keys: TLS, mutual TLS, SASL PLAIN / SCRAM / OAUTHBEARER-OIDC /
//! GSSAPI), the `[registry]` section (Schema Registry basic auth and CA), secret references
//! (`*_file`, `*_env`), the librdkafka log gate, TOML error messages without values, and the
//! liveness / readiness both binaries serve.
//!
//! Owns [`KafkaSection`], [`RegistrySection`], [`LogGate`], [`Health`] and [`ConnectError`]. Invariants:
//! a secret is read from its file or environment variable only while a client is configured
//! and goes straight into that client's configuration; it is never held in a config struct,
//! never logged and never part of an error (errors name the key and the file, not the value).
//! A secret given by value in the librdkafka passthrough is refused. Must not: open network
//! connections.

mod error;
mod gate;
mod health;
mod kafka;
mod registry;
mod secret;

pub use error::ConnectError;
pub use gate::{GateContext, LogGate};
pub use health::{Health, health_routes};
pub use kafka::{KafkaSection, KafkaSecurity, Mechanism, Sasl, Tls};
pub use registry::{RegistrySection, check_registry_url};
pub use secret::read_secret;

/// Checks the `[kafka]` and `[registry]` sections and the registry URL, reading no secret.
pub fn validate(
    kafka: &KafkaSection,
    registry: &RegistrySection,
    registry_url: Option<&str>,
) -> Result<(), ConnectError> {
    kafka.validate()?;
    registry.validate()?;
    registry_url.map_or(Ok(()), check_registry_url)
}

/// A TOML error without the file's text: what is wrong and where (line, column). toml's own
/// message quotes the offending line, and serde's quote a value of the wrong type (in double
/// quotes, or in backticks for numbers and booleans); either can be a secret written where it
/// does not belong. A value error keeps only what was expected; otherwise double-quoted parts
/// (escapes respected) are left out and key names (in backticks) stay.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let raw = e.message();
    let message = if let Some(kind) = ["invalid type", "invalid value", "invalid length"]
        .into_iter()
        .find(|k| raw.contains(k))
    {
        match raw.split_once(", expected ") {
            Some((_, expected)) => format!("{kind}, expected {}", without_quoted(expected)),
            None => kind.to_owned(),
        }
    } else {
        without_quoted(raw)
    };
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {}", message.trim())
        }
        None => message.trim().to_owned(),
    }
}

/// `s` with every double-quoted part (backslash escapes respected) replaced by `…`.
fn without_quoted(s: &str) -> String {
    let mut out = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in s.chars() {
        if quoted {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => {
                    quoted = false;
                    out.push('…');
                }
                _ => escaped = false,
            }
        } else if c == '"' {
            quoted = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// librdkafka's error as a reason without property values: a refused client property is
/// named by key only (librdkafka's own message quotes the value, which can be a secret).
pub fn kafka_error(e: &rdkafka::error::KafkaError) -> String {
    match e {
        rdkafka::error::KafkaError::ClientConfig(_, _, key, _) => {
            format!("librdkafka refused the value of property {key}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct File {
        #[serde(default)]
        kafka: KafkaSection,
        #[serde(default)]
        n: u32,
    }

    #[test]
    fn toml_errors_quote_no_value_of_any_type() {
        for text in [
            "[kafka]\n\"ssl.key.password\" = 123456\n",
            "[kafka]\n\"x\" = true\n",
            "n = \"hunter2\"\n",
            "n = \"a \\\" hunter2\"\n",
            "[kafka]\n\"x\" = [\"hunter2\"]\n",
        ] {
            let e = toml::from_str::<File>(text).unwrap_err();
            let m = toml_error(text, &e);
            for secret in ["123456", "true", "hunter2"] {
                assert!(!m.contains(secret), "{text:?}: {m}");
            }
            assert!(m.starts_with("line "), "{m}");
        }
        let text = "[kafka.security]\ntls_typo = 1\n";
        let m = toml_error(text, &toml::from_str::<File>(text).unwrap_err());
        assert!(m.contains("tls_typo"), "unknown keys are named: {m}");
    }

    #[test]
    fn refused_properties_are_named_without_their_value() {
        let e = rdkafka::ClientConfig::new()
            .set("sasl.jaas.config", "password='hunter2'")
            .create::<rdkafka::consumer::BaseConsumer>()
            .err()
            .expect("refused");
        let m = kafka_error(&e);
        assert!(
            m.contains("sasl.jaas.config") && !m.contains("hunter2"),
            "{m}"
        );
    }
}
