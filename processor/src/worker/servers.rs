//! Parsing settings of the servers whose records a worker handles.
//!
//! Owns [`ServerCache`]: per server and the `log_line_prefix` and `log_timezone` its records
//! carry, the settings compiled once (the server's configured values win, then the records',
//! then the defaults); the last entry used is checked first by pointer (records of one file
//! come in runs and share their texts). Logs once per server and prefix what the prefix cannot
//! give. Must not: parse records.

use std::sync::Arc;

use pgtrail_avro::{LogFormat, RecordSource};
use tracing::warn;

use crate::config::Config;
use crate::parse::ServerFormat;
use crate::partition::Servers;

/// Compiled parsing settings of a server for the settings its records carry.
struct Compiled {
    server: Arc<str>,
    prefix: Option<Arc<str>>,
    zone: Option<Arc<str>>,
    format: Result<ServerFormat, String>,
    /// Whether the prefix's limitations were looked at for stderr records (logged once per
    /// server and prefix, through [`ServerCache::warned`]).
    checked: bool,
}

impl Compiled {
    /// Whether these are the settings of `s` (the same shared texts: one comparison each).
    fn of(&self, s: &RecordSource) -> bool {
        let same = |a: &Option<Arc<str>>, b: &Option<Arc<str>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || a == b,
            (None, None) => true,
            _ => false,
        };
        (Arc::ptr_eq(&self.server, &s.server) || self.server == s.server)
            && same(&self.prefix, &s.log_line_prefix)
            && same(&self.zone, &s.log_timezone)
    }
}

/// Parsing settings per server and the settings its records carry, compiled once.
pub(crate) struct ServerCache {
    cfg: Config,
    compiled: Vec<Compiled>,
    /// The entry of the last lookup (records of one file come in runs).
    last: usize,
    /// Servers and prefixes whose limitations were logged.
    warned: foldhash::HashSet<(String, String)>,
}

impl ServerCache {
    /// An empty cache for `cfg`.
    pub(crate) fn new(cfg: Config) -> ServerCache {
        ServerCache {
            cfg,
            compiled: Vec::new(),
            last: 0,
            warned: foldhash::HashSet::default(),
        }
    }

    fn entry(&mut self, s: &RecordSource) -> usize {
        if self.compiled.get(self.last).is_some_and(|c| c.of(s)) {
            return self.last;
        }
        if let Some(i) = self.compiled.iter().position(|c| c.of(s)) {
            self.last = i;
            return i;
        }
        let format = self
            .cfg
            .server_format_for(
                &s.server,
                s.log_line_prefix.as_deref(),
                s.log_timezone.as_deref(),
            )
            .map_err(|e| e.to_string());
        self.compiled.push(Compiled {
            server: Arc::clone(&s.server),
            prefix: s.log_line_prefix.clone(),
            zone: s.log_timezone.clone(),
            format,
            checked: false,
        });
        self.last = self.compiled.len() - 1;
        self.last
    }
}

impl Servers for ServerCache {
    fn format(&mut self, source: &RecordSource) -> Result<&ServerFormat, String> {
        let i = self.entry(source);
        let c = &mut self.compiled[i];
        let f = c.format.as_ref().map_err(Clone::clone)?;
        // Once per entry, not per record: the check allocates.
        if source.format == LogFormat::Stderr && !c.checked {
            c.checked = true;
            let prefix = f.prefix.text().to_owned();
            if self
                .warned
                .insert((source.server.to_string(), prefix.clone()))
            {
                for limitation in f.prefix.limitations() {
                    warn!(
                        server = &*source.server,
                        log_line_prefix = prefix,
                        limitation,
                        "This server's log_line_prefix limits what its stderr logs can tell."
                    );
                }
            }
        }
        Ok(f)
    }

    fn accepts(&self, server: &str, format: LogFormat) -> bool {
        self.cfg.accepts(server, format)
    }
}
