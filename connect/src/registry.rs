//! The `[registry]` section: how to authenticate to the Schema Registry.
//!
//! Owns [`RegistrySection`]. Invariant: the password is read from its file or variable only
//! when the client is built. Must not: log the password or the URL's user info.

use std::path::PathBuf;

use pgtrail_avro::RegistryAuth;
use serde::Deserialize;

use crate::ConnectError;
use crate::secret::read_secret;

/// `[registry]`: Schema Registry authentication and trust.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrySection {
    /// HTTP basic auth user (Confluent Cloud: the API key). Default none.
    pub username: Option<String>,
    /// File holding the basic auth password (Confluent Cloud: the API secret). Default none.
    pub password_file: Option<PathBuf>,
    /// Environment variable holding the basic auth password. Default none.
    pub password_env: Option<String>,
    /// PEM file of CA certificates trusted besides the system's (a private registry CA).
    /// Default none.
    pub ca_file: Option<PathBuf>,
}

/// Refuses a registry URL with credentials in it (`https://user:pass@host`): they belong in
/// `[registry]` with the password from a file or variable.
pub fn check_registry_url(url: &str) -> Result<(), ConnectError> {
    let authority = url.split("://").nth(1).unwrap_or(url);
    let authority = authority.split('/').next().unwrap_or(authority);
    if authority.contains('@') {
        return Err(ConnectError::Invalid(
            "registry_url: credentials in the URL are refused; use [registry] username and password_file or password_env".into(),
        ));
    }
    Ok(())
}

impl RegistrySection {
    /// Checks the keys without reading secrets.
    pub fn validate(&self) -> Result<(), ConnectError> {
        let password = self.password_file.is_some() || self.password_env.is_some();
        if password && self.username.is_none() {
            return Err(ConnectError::Invalid(
                "registry: a password needs a username".into(),
            ));
        }
        Ok(())
    }

    /// The client's authentication, secrets read.
    pub fn auth(&self) -> Result<RegistryAuth, ConnectError> {
        self.validate()?;
        let password = read_secret(
            "registry.password",
            self.password_file.as_ref(),
            self.password_env.as_deref(),
        )?;
        let ca_pem = match &self.ca_file {
            Some(path) => Some(std::fs::read(path).map_err(|e| ConnectError::File {
                key: "registry.ca_file".into(),
                path: path.clone(),
                reason: e.kind().to_string(),
            })?),
            None => None,
        };
        Ok(RegistryAuth {
            basic: self.username.clone().map(|u| (u, password)),
            ca_pem,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_url_are_refused_without_being_quoted() {
        let e = check_registry_url("https://key:hunter2@registry:8081/x")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        check_registry_url("https://registry:8081/a@b").unwrap();
        let s = RegistrySection {
            password_env: Some("X".into()),
            ..RegistrySection::default()
        };
        assert!(s.validate().is_err(), "a password needs a user");
    }
}
