//! Where the tables live: the `[storage]` section (S3 and S3-compatible stores, Azure Blob /
//! ADLS Gen2, GCS), the storage options deltalake's backends get for a table, and the start-up
//! check of a lake location.
//!
//! Owns [`StorageSection`], [`Lake`] and [`S3Commits`]. Credentials come from named keys
//! (secrets by `*_file` / `*_env`), else from the backends' own chains: for S3 the AWS chain
//! (environment, profile, web identity / IRSA, EKS pod identity, instance metadata), for Azure
//! the `AZURE_*` environment (workload identity, managed identity), for GCS Application
//! Default Credentials. Invariants: a table commits a version with a put-if-absent (deltalake's
//! default log store), so two writers never both win a version — on S3 that needs the store
//! to honour conditional writes (`If-None-Match`), which the start-up check proves with a
//! probe object unless the operator declared a single writer; resolved options hold secrets
//! and are never printed (`Debug` shows keys only). Must not: write anything but the probe
//! object under `_pgtrail_probe/`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use deltalake::logstore::object_store::{ObjectStore, path::Path as ObjectPath};
use deltalake::logstore::object_store::{ObjectStoreExt as _, PutMode, PutOptions, PutPayload};
use pgtrail_connect::read_secret;
use serde::Deserialize;

use crate::error::ProcessorError;

/// How commits to an S3 table are kept from overwriting each other.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum S3Commits {
    /// Conditional writes (`If-None-Match: *`): AWS S3 and current S3-compatible stores. The
    /// start-up check refuses a store that ignores them.
    #[default]
    ConditionalPut,
    /// The operator guarantees one writer per table: no check. A store that ignores
    /// conditional writes then lets a second writer overwrite a commit (lost rows).
    SingleWriter,
}

/// `[storage.s3]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Section {
    /// Endpoint URL of an S3-compatible store (`http://minio:9000`). Default: AWS.
    pub endpoint: Option<String>,
    /// Region. Default: the AWS chain's (`AWS_REGION`), else `us-east-1`.
    pub region: Option<String>,
    /// Allow `http://` endpoints (tests, in-cluster stores). Default false.
    pub allow_http: bool,
    /// Virtual-hosted-style requests (`bucket.host`) instead of path style. Default false.
    pub virtual_hosted_style: bool,
    /// Access key id. Default: the AWS credential chain.
    pub access_key_id: Option<String>,
    /// File holding the secret access key. Default none.
    pub secret_access_key_file: Option<PathBuf>,
    /// Environment variable holding the secret access key. Default none.
    pub secret_access_key_env: Option<String>,
    /// AWS profile (shared config files). Default none.
    pub profile: Option<String>,
    /// `conditional-put` or `single-writer` (see README). Default `conditional-put`.
    pub commits: S3Commits,
}

/// `[storage.azure]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureSection {
    /// Storage account name. Default: `AZURE_STORAGE_ACCOUNT_NAME`.
    pub account: Option<String>,
    /// File holding the account key. Default none (workload / managed identity).
    pub access_key_file: Option<PathBuf>,
    /// Environment variable holding the account key. Default none.
    pub access_key_env: Option<String>,
    /// Blob endpoint URL (`http://127.0.0.1:10000/devstoreaccount1` for Azurite). Default:
    /// the account's public endpoint.
    pub endpoint: Option<String>,
    /// Allow `http://` endpoints. Default false.
    pub allow_http: bool,
}

/// `[storage.gcs]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcsSection {
    /// Service account key file. Default: Application Default Credentials.
    pub service_account_file: Option<PathBuf>,
}

/// `[storage]`: object-store settings of the lake.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `s3://` and `s3a://` tables.
    pub s3: S3Section,
    /// `az://`, `abfs://`, `abfss://`, `azure://` and `adl://` tables.
    pub azure: AzureSection,
    /// `gs://` tables.
    pub gcs: GcsSection,
    /// Any other deltalake / object_store storage option (`aws_...`, `azure_...`,
    /// `google_...`, `timeout`...), for every table. Secrets are refused here. Default none.
    pub options: BTreeMap<String, String>,
}

/// Options keys holding secrets: refused in `[storage.options]`.
const SECRET_OPTIONS: [&str; 8] = [
    "aws_secret_access_key",
    "secret_access_key",
    "aws_session_token",
    "session_token",
    "azure_storage_account_key",
    "account_key",
    "azure_storage_sas_key",
    "google_service_account_key",
];

fn config_err(reason: impl Into<String>) -> ProcessorError {
    ProcessorError::Config {
        reason: reason.into(),
    }
}

impl StorageSection {
    /// Checks the keys without reading secrets.
    pub fn validate(&self) -> Result<(), ProcessorError> {
        for key in self.options.keys() {
            let lower = key.to_ascii_lowercase();
            // object_store's aliases of its secret keys, by pattern (`access_key_id` is not one).
            let secret_like = ["secret", "token", "password", "sas", "account_key"]
                .iter()
                .any(|p| lower.contains(p))
                || (lower.ends_with("access_key") || lower.ends_with("service_account_key"));
            if secret_like || SECRET_OPTIONS.contains(&lower.as_str()) {
                return Err(config_err(format!(
                    "storage.options.{key}: secrets are not accepted by value; use [storage.s3] / [storage.azure] keys with _file or _env"
                )));
            }
        }
        Ok(())
    }
}

/// Which backend a table URI needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A local directory (or `file://`).
    Local,
    /// S3 or an S3-compatible store.
    S3,
    /// Azure Blob / ADLS Gen2.
    Azure,
    /// Google Cloud Storage.
    Gcs,
}

impl Backend {
    /// The backend of `uri`; an unknown scheme is a configuration error.
    pub fn of(uri: &str) -> Result<Backend, ProcessorError> {
        let Some((scheme, _)) = uri.split_once("://") else {
            return Ok(Backend::Local);
        };
        Ok(match scheme.to_ascii_lowercase().as_str() {
            "file" => Backend::Local,
            "s3" | "s3a" => Backend::S3,
            "az" | "abfs" | "abfss" | "azure" | "adl" => Backend::Azure,
            "gs" => Backend::Gcs,
            other => {
                return Err(config_err(format!(
                    "{uri}: unknown scheme {other}:// (local paths, s3, s3a, az, abfs, abfss, azure, adl, gs)"
                )));
            }
        })
    }
}

/// The lake's storage settings with secrets read: deltalake storage options per backend.
#[derive(Clone, Default)]
pub struct Lake {
    s3: HashMap<String, String>,
    azure: HashMap<String, String>,
    gcs: HashMap<String, String>,
    common: HashMap<String, String>,
    s3_commits: S3Commits,
}

impl std::fmt::Debug for Lake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn keys(m: &HashMap<String, String>) -> Vec<&String> {
            let mut k: Vec<&String> = m.keys().collect();
            k.sort();
            k
        }
        f.debug_struct("Lake")
            .field("s3", &keys(&self.s3))
            .field("azure", &keys(&self.azure))
            .field("gcs", &keys(&self.gcs))
            .field("common", &keys(&self.common))
            .field("s3_commits", &self.s3_commits)
            .finish()
    }
}

fn put(m: &mut HashMap<String, String>, k: &str, v: Option<impl ToString>) {
    if let Some(v) = v {
        m.insert(k.to_owned(), v.to_string());
    }
}

fn secret(
    key: &str,
    file: Option<&PathBuf>,
    env: Option<&str>,
) -> Result<Option<String>, ProcessorError> {
    read_secret(key, file, env).map_err(|e| config_err(e.to_string()))
}

impl Lake {
    /// The options of `section`, secrets read from their files and variables.
    pub fn from_section(section: &StorageSection) -> Result<Lake, ProcessorError> {
        section.validate()?;
        let (s3c, az, gcs) = (&section.s3, &section.azure, &section.gcs);
        let mut s3 = HashMap::new();
        put(&mut s3, "aws_endpoint", s3c.endpoint.as_ref());
        put(&mut s3, "aws_region", s3c.region.as_ref());
        put(&mut s3, "aws_allow_http", s3c.allow_http.then_some("true"));
        let hosted = s3c.virtual_hosted_style.then_some("true");
        put(&mut s3, "aws_virtual_hosted_style_request", hosted);
        put(&mut s3, "aws_access_key_id", s3c.access_key_id.as_ref());
        put(&mut s3, "aws_profile", s3c.profile.as_ref());
        let key = secret(
            "storage.s3.secret_access_key",
            s3c.secret_access_key_file.as_ref(),
            s3c.secret_access_key_env.as_deref(),
        )?;
        put(&mut s3, "aws_secret_access_key", key);
        // Commits are put-if-absent (`If-None-Match: *`); object_store's default, stated so
        // that no `AWS_CONDITIONAL_PUT` in the environment can turn it off.
        s3.insert("aws_conditional_put".into(), "etag".into());
        let mut azure = HashMap::new();
        put(
            &mut azure,
            "azure_storage_account_name",
            az.account.as_ref(),
        );
        put(&mut azure, "azure_storage_endpoint", az.endpoint.as_ref());
        put(
            &mut azure,
            "azure_allow_http",
            az.allow_http.then_some("true"),
        );
        let key = secret(
            "storage.azure.access_key",
            az.access_key_file.as_ref(),
            az.access_key_env.as_deref(),
        )?;
        put(&mut azure, "azure_storage_account_key", key);
        let mut gcs_opts = HashMap::new();
        let sa = gcs.service_account_file.as_ref().map(|p| p.display());
        put(&mut gcs_opts, "google_service_account", sa);
        Ok(Lake {
            s3,
            azure,
            gcs: gcs_opts,
            common: section.options.clone().into_iter().collect(),
            s3_commits: s3c.commits,
        })
    }

    /// The deltalake storage options of the table at `uri`.
    /// `[storage.options]` keys prefixed `aws_`, `azure_` or `google_` go to that backend
    /// only, other keys (`timeout`, `proxy_url`...) to every object store; they are applied
    /// after the named keys (an explicit override).
    pub fn options_for(&self, uri: &str) -> HashMap<String, String> {
        let backend = Backend::of(uri).unwrap_or(Backend::Local);
        let (mut o, own) = match backend {
            Backend::S3 => (self.s3.clone(), "aws_"),
            Backend::Azure => (self.azure.clone(), "azure_"),
            Backend::Gcs => (self.gcs.clone(), "google_"),
            Backend::Local => return HashMap::new(),
        };
        for (k, v) in &self.common {
            let lower = k.to_ascii_lowercase();
            let foreign = ["aws_", "azure_", "google_"]
                .iter()
                .any(|p| *p != own && lower.starts_with(p));
            if !foreign {
                o.insert(k.clone(), v.clone());
            }
        }
        o
    }

    /// The object store rooted at `uri` (the table's or the lake's root).
    pub fn store(&self, uri: &str) -> Result<std::sync::Arc<dyn ObjectStore>, ProcessorError> {
        let delta = |source| ProcessorError::Delta {
            table: uri.to_owned(),
            operation: "open the object store",
            source: Box::new(source),
        };
        let url = deltalake::ensure_table_uri(uri).map_err(delta)?;
        let store = deltalake::DeltaTableBuilder::from_url(url)
            .map_err(delta)?
            .with_storage_options(self.options_for(uri))
            .build_storage()
            .map_err(delta)?;
        Ok(store.object_store(None))
    }

    /// Checks that the lake at `uri` is reachable with the configured credentials, and on S3
    /// that it honours conditional writes (unless a single writer was declared). Local
    /// directories are created.
    pub async fn check(&self, uri: &str) -> Result<(), ProcessorError> {
        let backend = Backend::of(uri)?;
        if backend == Backend::Local {
            let path = uri.strip_prefix("file://").unwrap_or(uri);
            return std::fs::create_dir_all(path).map_err(|e| ProcessorError::Lake {
                location: uri.to_owned(),
                reason: format!("cannot create the directory: {e}"),
            });
        }
        let store = self.store(uri)?;
        let lake_err = |what: &str, e: deltalake::ObjectStoreError| ProcessorError::Lake {
            location: uri.to_owned(),
            reason: format!("{what}: {}", object_store_reason(&e)),
        };
        store
            .list_with_delimiter(None)
            .await
            .map_err(|e| lake_err("listing", e))?;
        if backend == Backend::S3 && self.s3_commits == S3Commits::SingleWriter {
            return Ok(());
        }
        self.probe_conditional_put(store.as_ref())
            .await
            .map_err(|reason| ProcessorError::Lake {
                location: uri.to_owned(),
                reason,
            })
    }

    /// Writes a probe object twice with put-if-absent: the second write must be refused.
    async fn probe_conditional_put(&self, store: &dyn ObjectStore) -> Result<(), String> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path = ObjectPath::from(format!("_pgtrail_probe/{}-{nanos}", std::process::id()));
        let create = || PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        let payload = || PutPayload::from_static(b"pgtrail conditional write probe");
        let first = store.put_opts(&path, payload(), create()).await;
        let second = match first {
            Ok(_) => store.put_opts(&path, payload(), create()).await,
            Err(e) => {
                return Err(format!(
                    "a conditional write (put if absent) failed: {}; commits need it (on S3 set [storage.s3] commits = \"single-writer\" only if one processor writes each table)",
                    object_store_reason(&e)
                ));
            }
        };
        let _ = store.delete(&path).await;
        match second {
            Err(deltalake::ObjectStoreError::AlreadyExists { .. }) => Ok(()),
            Ok(_) => Err(
                "the store ignores conditional writes (If-None-Match): two writers could overwrite each other's commits; use a store that honours them, or set [storage.s3] commits = \"single-writer\" if one processor writes each table".into(),
            ),
            Err(e) => Err(format!(
                "a second conditional write failed with an unexpected error: {}",
                object_store_reason(&e)
            )),
        }
    }
}

/// An object-store error as a reason: its kind and message, which name the path and the
/// store's answer (never credentials: object_store does not put them in errors).
pub fn object_store_reason(e: &deltalake::ObjectStoreError) -> String {
    e.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltalake::logstore::object_store::memory::InMemory;
    use deltalake::logstore::object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutResult,
    };
    use futures::stream::BoxStream;

    /// A store that takes every write as an overwrite: one that ignores `If-None-Match`.
    #[derive(Debug)]
    struct IgnoresConditions(InMemory);

    impl std::fmt::Display for IgnoresConditions {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "IgnoresConditions")
        }
    }

    type R<T> = deltalake::logstore::object_store::Result<T>;

    #[async_trait::async_trait]
    impl ObjectStore for IgnoresConditions {
        async fn put_opts(&self, p: &ObjectPath, d: PutPayload, _: PutOptions) -> R<PutResult> {
            self.0.put_opts(p, d, PutOptions::default()).await
        }
        async fn put_multipart_opts(
            &self,
            p: &ObjectPath,
            o: PutMultipartOptions,
        ) -> R<Box<dyn MultipartUpload>> {
            self.0.put_multipart_opts(p, o).await
        }
        async fn get_opts(&self, p: &ObjectPath, o: GetOptions) -> R<GetResult> {
            self.0.get_opts(p, o).await
        }
        fn delete_stream(
            &self,
            l: BoxStream<'static, R<ObjectPath>>,
        ) -> BoxStream<'static, R<ObjectPath>> {
            self.0.delete_stream(l)
        }
        fn list(&self, p: Option<&ObjectPath>) -> BoxStream<'static, R<ObjectMeta>> {
            self.0.list(p)
        }
        async fn list_with_delimiter(&self, p: Option<&ObjectPath>) -> R<ListResult> {
            self.0.list_with_delimiter(p).await
        }
        async fn copy_opts(&self, f: &ObjectPath, t: &ObjectPath, o: CopyOptions) -> R<()> {
            self.0.copy_opts(f, t, o).await
        }
    }

    #[tokio::test]
    async fn a_store_that_ignores_conditional_writes_is_refused() {
        let lake = Lake::default();
        lake.probe_conditional_put(&InMemory::new()).await.unwrap();
        let e = lake
            .probe_conditional_put(&IgnoresConditions(InMemory::new()))
            .await
            .unwrap_err();
        assert!(
            e.contains("ignores conditional writes") && e.contains("single-writer"),
            "{e}"
        );
        let store = InMemory::new();
        lake.probe_conditional_put(&store).await.unwrap();
        let left = store.list_with_delimiter(None).await.unwrap();
        assert!(
            left.objects.is_empty() && left.common_prefixes.len() <= 1,
            "probe removed"
        );
    }

    #[test]
    fn options_go_to_their_backend_and_secrets_are_not_printed() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "wJalrXUtnFEMI\n").unwrap();
        let section: StorageSection = toml::from_str(&format!(
            "[s3]\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\naccess_key_id = \"AKIA\"\nsecret_access_key_file = {key:?}\n[azure]\naccount = \"acct\"\n[options]\ntimeout = \"30s\"\n"
        ))
        .unwrap();
        let lake = Lake::from_section(&section).unwrap();
        let s3 = lake.options_for("s3://bucket/t");
        assert_eq!(s3["aws_secret_access_key"], "wJalrXUtnFEMI");
        assert_eq!(s3["aws_conditional_put"], "etag");
        assert_eq!(s3["timeout"], "30s");
        assert!(!s3.contains_key("azure_storage_account_name"));
        let with_prefixed: StorageSection =
            toml::from_str("[options]\nazure_container_name = \"c\"\naws_region = \"r\"\n")
                .unwrap();
        let l2 = Lake::from_section(&with_prefixed).unwrap();
        assert!(
            !l2.options_for("s3://b/t")
                .contains_key("azure_container_name")
        );
        assert_eq!(l2.options_for("s3://b/t")["aws_region"], "r");
        assert!(
            lake.options_for("abfss://c@acct.dfs.core.windows.net/t")["azure_storage_account_name"]
                == "acct"
        );
        assert!(lake.options_for("/tmp/lake").is_empty());
        assert!(!format!("{lake:?}").contains("wJalr"));
        assert!(Backend::of("hdfs://x/y").is_err());
        for key in [
            "aws_secret_access_key",
            "token",
            "azure_storage_access_key",
            "sas_token",
            "access_key",
            "client_secret",
        ] {
            let bad: StorageSection =
                toml::from_str(&format!("[options]\n{key} = \"x\"\n")).unwrap();
            assert!(bad.validate().is_err(), "{key}");
        }
        let fine: StorageSection =
            toml::from_str("[options]\naws_access_key_id = \"x\"\ntimeout = \"5s\"\n").unwrap();
        fine.validate().unwrap();
        assert!(toml::from_str::<StorageSection>("[s3]\ncommits = \"yolo\"\n").is_err());
    }
}
