//! Confluent Schema Registry client: register the envelope schema, fetch writer schemas by id.
//!
//! Owns [`Registry`], a thin wrapper over `schema_registry_converter`'s async calls with a
//! per-id schema cache. Invariant: a schema id, once fetched, is cached for the life of the
//! process (registry ids are immutable). Must not: log credentials; the URL is logged without
//! user info by callers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use schema_registry_converter::async_impl::schema_registry::{
    SrSettings, get_schema_by_id, post_schema,
};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};

use crate::error::AvroError;
use crate::record::{RAW_RECORD_SCHEMA, RAW_RECORD_SCHEMA_V3};

/// The registry ids of the envelope schemas a shipper writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeIds {
    /// Version 3: log records.
    pub log: u32,
    /// The current version: heartbeats.
    pub heartbeat: u32,
}

/// How to authenticate to the registry: HTTP basic auth (Confluent Cloud: API key and
/// secret) and extra CA certificates (PEM) to trust. The password is not printed by `Debug`.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    /// User name and password.
    pub basic: Option<(String, Option<String>)>,
    /// PEM bundle of CA certificates trusted besides the system's.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("user", &self.basic.as_ref().map(|b| &b.0))
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

/// A Schema Registry at one URL.
#[derive(Clone)]
pub struct Registry {
    settings: SrSettings,
    cache: Arc<Mutex<HashMap<u32, Arc<Schema>>>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish_non_exhaustive()
    }
}

/// A registry error: retryable when the client says so (the request failed, 502, 503) or the
/// registry answered with another server error (5xx: its backing store, an overloaded node),
/// which a later attempt may not meet. The reason is the client's message, never its cause
/// (which can quote the URL, credentials included).
fn registry_error(operation: String, e: SRCError) -> AvroError {
    let server_error = e.error.contains("with status 5");
    AvroError::Registry {
        operation,
        reason: e.error.clone(),
        retryable: e.retriable || server_error,
    }
}

impl Registry {
    /// A client for the registry at `url` (e.g. `http://registry:8081`).
    pub fn new(url: &str) -> Result<Self, AvroError> {
        Self::with_auth(url, RegistryAuth::default())
    }

    /// A client for the registry at `url` authenticating with `auth`.
    pub fn with_auth(url: &str, auth: RegistryAuth) -> Result<Self, AvroError> {
        let mut builder = SrSettings::new_builder(url.trim_end_matches('/').to_owned());
        builder.set_timeout(std::time::Duration::from_secs(10));
        if let Some((user, password)) = &auth.basic {
            builder.set_basic_authorization(user, password.as_deref());
        }
        let mut client = reqwest::Client::builder();
        if let Some(pem) = &auth.ca_pem {
            for cert in
                reqwest::Certificate::from_pem_bundle(pem).map_err(|e| AvroError::Registry {
                    operation: "configure client".into(),
                    reason: format!("CA bundle: {e}"),
                    retryable: false,
                })?
            {
                client = client.add_root_certificate(cert);
            }
        }
        let settings = builder
            .build_with(client)
            .map_err(|e| registry_error("configure client".into(), e))?;
        Ok(Registry {
            settings,
            cache: Arc::default(),
        })
    }

    /// Registers the envelope schemas the shipper writes under `<topic>-value` (topic name
    /// strategy): version 3 (log records) and the current one (heartbeats), and returns their
    /// ids. Idempotent: the registry returns the existing id for a known schema; the two are
    /// compatible both ways (the newer adds a field with a default).
    pub async fn register_envelope(&self, topic: &str) -> Result<EnvelopeIds, AvroError> {
        Ok(EnvelopeIds {
            log: self.register(topic, RAW_RECORD_SCHEMA_V3).await?,
            heartbeat: self.register(topic, RAW_RECORD_SCHEMA).await?,
        })
    }

    async fn register(&self, topic: &str, text: &str) -> Result<u32, AvroError> {
        let subject = format!("{topic}-value");
        let supplied = SuppliedSchema::new(
            Some("io.pgtrail.avro.RawLogRecord".into()),
            SchemaType::Avro,
            text.to_owned(),
        );
        let registered = post_schema(&self.settings, subject.clone(), supplied)
            .await
            .map_err(|e| registry_error(format!("register subject {subject}"), e))?;
        Ok(registered.id)
    }

    /// The writer schema with registry id `id`, from the cache or the registry.
    pub async fn schema(&self, id: u32) -> Result<Arc<Schema>, AvroError> {
        if let Some(s) = self.cached(id) {
            return Ok(s);
        }
        let registered = get_schema_by_id(id, &self.settings)
            .await
            .map_err(|e| registry_error(format!("fetch schema id {id}"), e))?;
        let schema =
            Schema::parse_str(&registered.schema).map_err(|e| AvroError::Incompatible {
                schema: format!("registry id {id}"),
                reason: e.to_string(),
            })?;
        let schema = Arc::new(schema);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(id, schema.clone());
        }
        Ok(schema)
    }

    fn cached(&self, id: u32) -> Option<Arc<Schema>> {
        self.cache.lock().ok().and_then(|c| c.get(&id).cloned())
    }
}
