//! Alert webhooks of the lag monitor: a notice when a subject's status changes (firing, or
//! resolved when it is OK again), repeated while it stays bad, sent to every configured
//! receiver in its format (generic JSON, Slack incoming webhook, Alertmanager `/api/v2/alerts`)
//! with retries.
//!
//! Owns [`Alerter`] (the pure decision: what to send when) and [`Sender`] (bodies and HTTP).
//! A subject is a table's group status (`lag/<table>`) or a server's freshness
//! (`freshness/<server>`). Invariants: a subject that was never bad never sends anything; a
//! bad subject sends one firing notice per change and one resolved notice when it is OK
//! again; statuses below `alert_on` count as OK. Must not: log a receiver's URL (it may hold
//! a token) or anything of the records.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::status::Severity;

/// What a notice says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NoticeKind {
    /// The subject turned bad, or changed from one bad status to another.
    Firing,
    /// Still bad after the repeat interval.
    Repeat,
    /// OK again.
    Resolved,
}

/// A subject's condition as the monitor sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// Status name (`STOP`, `STALE`, `OK`...).
    pub status: String,
    /// Its severity.
    pub severity: Severity,
    /// One line for people.
    pub summary: String,
    /// Details (partitions, lags), as JSON.
    pub details: serde_json::Value,
}

/// One notice to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The subject.
    pub subject: String,
    /// Firing, repeat or resolved.
    pub kind: NoticeKind,
    /// The status before the change (`OK` for a first firing).
    pub previous: String,
    /// The condition now.
    pub condition: Condition,
    /// Since when the subject is bad.
    pub since: DateTime<Utc>,
}

/// Per subject: the status last notified, when, and since when it is bad.
#[derive(Debug, Default)]
pub struct Alerter {
    alert_on: Option<Severity>,
    repeat: Duration,
    open: BTreeMap<String, (String, DateTime<Utc>, DateTime<Utc>)>,
}

impl Alerter {
    /// Alerts on statuses of `alert_on` severity or worse, repeated every `repeat`.
    pub fn new(alert_on: Severity, repeat: Duration) -> Alerter {
        Alerter {
            alert_on: Some(alert_on),
            repeat,
            open: BTreeMap::new(),
        }
    }

    /// What to send for `subject` now in `condition`.
    pub fn decide(
        &mut self,
        subject: &str,
        condition: Condition,
        now: DateTime<Utc>,
    ) -> Option<Notice> {
        let bad = self.alert_on.is_some_and(|on| condition.severity >= on);
        let notice = |kind, previous: String, since| Notice {
            subject: subject.to_owned(),
            kind,
            previous,
            condition: condition.clone(),
            since,
        };
        match (self.open.get(subject).cloned(), bad) {
            (None, false) => None,
            (None, true) => {
                self.open
                    .insert(subject.to_owned(), (condition.status.clone(), now, now));
                Some(notice(NoticeKind::Firing, "OK".into(), now))
            }
            (Some((previous, _, since)), false) => {
                self.open.remove(subject);
                Some(notice(NoticeKind::Resolved, previous, since))
            }
            (Some((previous, sent, since)), true) => {
                if previous != condition.status {
                    self.open
                        .insert(subject.to_owned(), (condition.status.clone(), now, since));
                    Some(notice(NoticeKind::Firing, previous, since))
                } else if (now - sent).to_std().unwrap_or_default() >= self.repeat {
                    self.open
                        .insert(subject.to_owned(), (previous.clone(), now, since));
                    Some(notice(NoticeKind::Repeat, previous, since))
                } else {
                    None
                }
            }
        }
    }
}

/// A receiver's body format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// pgtrail's own JSON object (README).
    #[default]
    Json,
    /// A Slack incoming webhook (`{"text": ...}`).
    Slack,
    /// Alertmanager's `POST /api/v2/alerts` (an array of alerts; resolved ones end now).
    Alertmanager,
}

/// The body of `notice` in `format`.
pub fn body(
    format: WebhookFormat,
    notice: &Notice,
    group: &str,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let c = &notice.condition;
    let resolved = notice.kind == NoticeKind::Resolved;
    let severity = match c.severity {
        Severity::Ok => "none",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    };
    match format {
        WebhookFormat::Json => json!({
            "subject": notice.subject,
            "kind": notice.kind,
            "status": c.status,
            "previous": notice.previous,
            "severity": severity,
            "group": group,
            "summary": c.summary,
            "details": c.details,
            "since": notice.since.to_rfc3339(),
            "at": now.to_rfc3339(),
        }),
        WebhookFormat::Slack => {
            let icon = if resolved {
                ":white_check_mark:"
            } else {
                ":rotating_light:"
            };
            let word = match notice.kind {
                NoticeKind::Firing => "FIRING",
                NoticeKind::Repeat => "STILL FIRING",
                NoticeKind::Resolved => "RESOLVED",
            };
            json!({
                "text": format!(
                    "{icon} pgtrail {word} {}: {} (was {}; group {group}) {}",
                    notice.subject, c.status, notice.previous, c.summary
                ),
            })
        }
        WebhookFormat::Alertmanager => {
            let (name, _) = notice
                .subject
                .split_once('/')
                .unwrap_or((&notice.subject, ""));
            let alertname = if name == "freshness" {
                "PgtrailFreshness"
            } else {
                "PgtrailLag"
            };
            let mut alert = json!({
                "labels": {
                    "alertname": alertname,
                    "subject": notice.subject,
                    "group": group,
                    "status": if resolved { notice.previous.as_str() } else { c.status.as_str() },
                    "severity": severity,
                },
                "annotations": {
                    "summary": c.summary,
                    "description": c.details.to_string(),
                },
                "startsAt": notice.since.to_rfc3339(),
            });
            if resolved {
                alert["endsAt"] = json!(now.to_rfc3339());
            }
            json!([alert])
        }
    }
}

/// Sends notices to one receiver.
pub struct Sender {
    /// The receiver's name (what logs say instead of its URL).
    pub name: String,
    url: String,
    format: WebhookFormat,
    retries: u32,
    client: reqwest::Client,
}

impl Sender {
    /// A sender to `url` (never logged) in `format`, trying `retries` more times on failure.
    pub fn new(
        name: &str,
        url: String,
        format: WebhookFormat,
        retries: u32,
        timeout: Duration,
    ) -> Sender {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Sender {
            name: name.to_owned(),
            url,
            format,
            retries,
            client,
        }
    }

    /// Sends `notice`; `Err` after the last retry failed (the reason names no URL).
    pub async fn send(&self, notice: &Notice, group: &str) -> Result<(), String> {
        let body = body(self.format, notice, group, Utc::now());
        let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
        let mut delay = Duration::from_millis(500);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .client
                .post(&self.url)
                .header("content-type", "application/json")
                .body(bytes.clone())
                .send()
                .await;
            let outcome = match sent {
                Ok(r) if r.status().is_success() => return Ok(()),
                Ok(r) => format!("HTTP {}", r.status().as_u16()),
                // Without the URL: reqwest's Display names it.
                Err(e) => e.without_url().to_string(),
            };
            if attempt > self.retries {
                return Err(outcome);
            }
            tracing::warn!(
                receiver = self.name,
                attempt,
                reason = outcome,
                "Alert webhook failed; retrying."
            );
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond(status: &str, severity: Severity) -> Condition {
        Condition {
            status: status.into(),
            severity,
            summary: format!("is {status}"),
            details: json!({}),
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn one_firing_per_change_repeats_and_one_resolved() {
        let mut a = Alerter::new(Severity::Warning, Duration::from_secs(600));
        let kinds = |n: Option<Notice>| n.map(|n| (n.kind, n.previous, n.condition.status));
        assert_eq!(
            kinds(a.decide("lag/t", cond("OK", Severity::Ok), at(0))),
            None
        );
        assert_eq!(
            kinds(a.decide("lag/t", cond("STOP", Severity::Critical), at(10))),
            Some((NoticeKind::Firing, "OK".into(), "STOP".into()))
        );
        assert_eq!(
            kinds(a.decide("lag/t", cond("STOP", Severity::Critical), at(20))),
            None
        );
        assert_eq!(
            kinds(a.decide("lag/t", cond("STALL", Severity::Critical), at(30))),
            Some((NoticeKind::Firing, "STOP".into(), "STALL".into()))
        );
        assert_eq!(
            kinds(a.decide("lag/t", cond("STALL", Severity::Critical), at(700))),
            Some((NoticeKind::Repeat, "STALL".into(), "STALL".into()))
        );
        let resolved = a
            .decide("lag/t", cond("OK", Severity::Ok), at(710))
            .unwrap();
        assert_eq!(resolved.kind, NoticeKind::Resolved);
        assert_eq!(resolved.since, at(10), "bad since the first firing");
        assert_eq!(
            kinds(a.decide("lag/t", cond("OK", Severity::Ok), at(720))),
            None
        );
    }

    #[test]
    fn statuses_below_alert_on_do_not_fire() {
        let mut a = Alerter::new(Severity::Critical, Duration::from_secs(600));
        assert!(
            a.decide("lag/t", cond("WARN", Severity::Warning), at(0))
                .is_none()
        );
        assert!(
            a.decide("lag/t", cond("STOP", Severity::Critical), at(1))
                .is_some()
        );
        // STOP → WARN is below the threshold: resolved.
        let n = a
            .decide("lag/t", cond("WARN", Severity::Warning), at(2))
            .unwrap();
        assert_eq!(n.kind, NoticeKind::Resolved);
    }

    #[test]
    fn bodies_of_each_format() {
        let n = Notice {
            subject: "lag/primary_postgresql_logs".into(),
            kind: NoticeKind::Resolved,
            previous: "STOP".into(),
            condition: cond("OK", Severity::Ok),
            since: at(0),
        };
        let am = body(WebhookFormat::Alertmanager, &n, "g", at(60));
        assert_eq!(am[0]["labels"]["alertname"], "PgtrailLag");
        assert_eq!(am[0]["endsAt"], at(60).to_rfc3339());
        let slack = body(WebhookFormat::Slack, &n, "g", at(60));
        assert!(slack["text"].as_str().unwrap().contains("RESOLVED"));
        let generic = body(WebhookFormat::Json, &n, "g", at(60));
        assert_eq!(
            (generic["kind"].as_str(), generic["previous"].as_str()),
            (Some("resolved"), Some("STOP"))
        );
    }
}
