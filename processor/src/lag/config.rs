//! The `[lag]` section of the processor's configuration file: what `pgtrail-processor lag`
//! needs beyond the processor's own keys (it reads the same file: brokers, group, topics,
//! lake, `[kafka]`, `[storage]`).
//!
//! Owns [`LagSection`] and [`WebhookSection`]. Invariants: durations are humantime strings
//! (`30s`, `10m`); a receiver's URL may carry a token, so it can come from a file or an
//! environment variable and is never logged. Must not: open connections.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use super::alert::WebhookFormat;
use super::status::Severity;

pub(crate) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// Which statuses send alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertOn {
    /// WARN and worse.
    #[default]
    Warning,
    /// Critical statuses only (STALL, STOP, REWIND, ERR, RESET, LOSS, stale freshness).
    Critical,
}

impl AlertOn {
    /// The least severity that alerts.
    pub fn severity(self) -> Severity {
        match self {
            AlertOn::Warning => Severity::Warning,
            AlertOn::Critical => Severity::Critical,
        }
    }
}

/// `[lag]`: the lag monitor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LagSection {
    /// Time between observations with `--serve`. Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// The sliding window: a partition whose oldest waiting record is older than this and
    /// whose table position did not move within it is STALL or STOP; lag growing at every
    /// observation across it is WARN. Default `10m`.
    #[serde(deserialize_with = "duration")]
    pub window: Duration,
    /// Time lag over this is WARN. Default `5m`.
    #[serde(deserialize_with = "duration")]
    pub warn_time_lag: Duration,
    /// A server whose newest heartbeat in the lake is older than this is STALE (critical).
    /// Default `5m` (the shipper sends one every 30 s by default).
    #[serde(deserialize_with = "duration")]
    pub freshness: Duration,
    /// `warning` or `critical`: the least severity that sends alerts. Default `warning`.
    pub alert_on: AlertOn,
    /// A subject still bad is notified again after this long. Default `4h`.
    #[serde(deserialize_with = "duration")]
    pub repeat_interval: Duration,
    /// Prometheus endpoint of `--serve` (`/metrics`, `/healthz`, `/readyz`), or `none`.
    /// Default `127.0.0.1:9189`.
    pub metrics_addr: String,
    /// `[[lag.webhooks]]`: alert receivers. Default none.
    pub webhooks: Vec<WebhookSection>,
    /// How far back failed runs and unreconciled commits in the job-audit table count
    /// (`pgtrail_lag_job_runs_failed`, `pgtrail_lag_job_commits_unreconciled`; read every
    /// 5 minutes). Default `1h`.
    #[serde(deserialize_with = "duration")]
    pub jobs_window: Duration,
}

impl Default for LagSection {
    fn default() -> Self {
        LagSection {
            interval: Duration::from_secs(30),
            window: Duration::from_secs(600),
            warn_time_lag: Duration::from_secs(300),
            freshness: Duration::from_secs(300),
            alert_on: AlertOn::Warning,
            repeat_interval: Duration::from_secs(4 * 3600),
            metrics_addr: "127.0.0.1:9189".into(),
            webhooks: Vec::new(),
            jobs_window: Duration::from_secs(3600),
        }
    }
}

/// `[[lag.webhooks]]`: one alert receiver.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSection {
    /// Its name in logs (the URL never is). Required.
    pub name: String,
    /// The URL, when it holds no token (an in-cluster Alertmanager). Default none.
    pub url: Option<String>,
    /// A file holding the URL (a Slack webhook URL is a secret). Default none.
    pub url_file: Option<PathBuf>,
    /// An environment variable holding the URL. Default none.
    pub url_env: Option<String>,
    /// `json` (pgtrail's object), `slack` or `alertmanager`. Default `json`.
    #[serde(default)]
    pub format: WebhookFormat,
    /// Further attempts after a failed delivery (with backoff from 0.5 s). Default 3.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Timeout of each attempt. Default `10s`.
    #[serde(default = "default_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
}

fn default_retries() -> u32 {
    3
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl WebhookSection {
    /// The URL, from exactly one of `url`, `url_file` and `url_env`.
    pub fn resolve_url(&self) -> Result<String, String> {
        let key = format!("lag.webhooks {}: url", self.name);
        let secret =
            pgtrail_connect::read_secret(&key, self.url_file.as_ref(), self.url_env.as_deref())
                .map_err(|e| e.to_string())?;
        match (self.url.clone(), secret) {
            (Some(_), Some(_)) => Err(format!("{key}: give url, url_file or url_env, one of them")),
            (Some(u), None) | (None, Some(u)) => Ok(u),
            (None, None) => Err(format!("{key}: give url, url_file or url_env")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_humantime_and_unknown_keys_are_refused() {
        let s: LagSection = toml::from_str(
            "interval = \"5s\"\nwindow = \"2m\"\nalert_on = \"critical\"\n[[webhooks]]\nname = \"am\"\nurl = \"http://am:9093/api/v2/alerts\"\nformat = \"alertmanager\"\n",
        )
        .unwrap();
        assert_eq!(s.interval, Duration::from_secs(5));
        assert_eq!(s.window, Duration::from_secs(120));
        assert_eq!(s.alert_on, AlertOn::Critical);
        assert_eq!(s.webhooks[0].format, WebhookFormat::Alertmanager);
        assert_eq!(s.webhooks[0].retries, 3);
        assert!(toml::from_str::<LagSection>("windw = \"2m\"").is_err());
        assert!(toml::from_str::<LagSection>("window = 120").is_err());
    }

    #[test]
    fn a_url_comes_from_exactly_one_place() {
        let mut w: WebhookSection =
            toml::from_str("name = \"slack\"\nurl_env = \"PGTRAIL_TEST_NO_SUCH_VAR\"").unwrap();
        assert!(w.resolve_url().is_err());
        w.url = Some("http://x".into());
        w.url_env = None;
        assert_eq!(w.resolve_url().unwrap(), "http://x");
    }
}
