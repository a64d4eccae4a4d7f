//! Secret references: a secret comes from a file (`<name>_file`, the way Kubernetes mounts
//! Secrets) or from an environment variable named in the config (`<name>_env`), never from the
//! config file by value.
//!
//! Owns [`read_secret`]. Invariant: the value is returned to the caller only; errors name the
//! key and the file or variable, never the content. Must not: log.

use std::path::PathBuf;

use crate::ConnectError;

/// The secret `key` from `file` or the environment variable `env` (exactly one may be given);
/// `None` when neither is. One trailing newline of a file is dropped (`echo x > file`).
pub fn read_secret(
    key: &str,
    file: Option<&PathBuf>,
    env: Option<&str>,
) -> Result<Option<String>, ConnectError> {
    match (file, env) {
        (Some(_), Some(_)) => Err(ConnectError::Invalid(format!(
            "{key}: give {key}_file or {key}_env, not both"
        ))),
        (Some(path), None) => {
            let err = |reason: String| ConnectError::Secret {
                key: format!("{key}_file"),
                source_desc: format!("file {}", path.display()),
                reason,
            };
            let text = std::fs::read_to_string(path).map_err(|e| err(e.kind().to_string()))?;
            let text = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(&text);
            if text.is_empty() {
                return Err(err("empty".into()));
            }
            Ok(Some(text.to_owned()))
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            Ok(_) | Err(_) => Err(ConnectError::Secret {
                key: format!("{key}_env"),
                source_desc: format!("environment variable {var}"),
                reason: "unset or empty".into(),
            }),
        },
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_comes_from_one_place_and_errors_do_not_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("pw");
        std::fs::write(&f, "hunter2\n").unwrap();
        assert_eq!(
            read_secret("k", Some(&f), None).unwrap().as_deref(),
            Some("hunter2")
        );
        assert!(read_secret("k", None, None).unwrap().is_none());
        assert!(read_secret("k", Some(&f), Some("X")).is_err());
        let missing = dir.path().join("nope");
        let e = read_secret("k", Some(&missing), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("k_file") && e.contains("nope"), "{e}");
        let e = read_secret("k", None, Some("PGTRAIL_TEST_UNSET_VAR"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("PGTRAIL_TEST_UNSET_VAR"), "{e}");
        std::fs::write(&f, "\n").unwrap();
        assert!(read_secret("k", Some(&f), None).is_err(), "empty");
    }
}
