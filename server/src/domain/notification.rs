//! What is sent to people, and where it may go: the [`Notification`]
//! record (the outbox keeps it as JSON) and the webhook allow-list.

use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    pub delivery_id: String,
    /// `offer`, `emergency_services`, `stand_down`, `visit_missed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub alert_id: String,
    pub priority: String,
    pub alert_kind: String,
    pub community_id: String,
    pub resident_id: String,
    pub staff_id: String,
    pub escalation_level: u32,
    pub deadline_ms: i64,
    pub sent_ms: i64,
    /// `visit_missed`: the plan and the local day ("2026-11-26").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub visit_plan_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub day: String,
    /// Messages to a resident's family (`family_*` kinds, to an `sms:`
    /// address): the text in the contact's language, and whether the
    /// deliverer appends a fresh family-view link for that contact.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub text: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub language: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub link: bool,
    /// `emergency_services`: the hand-off sheet (`domain/handoff.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<serde_json::Value>,
}

/// The hosts webhooks may go to (`notify.webhook_hosts`): an exact name or
/// address, or `*.suffix` for a domain's hosts. Nothing else is called, so
/// a contact URL typed into the directory cannot make the server reach
/// into an internal network it was not meant to.
#[derive(Debug, Clone, Default)]
pub struct WebhookHosts {
    allowed: Vec<String>,
}

impl WebhookHosts {
    pub fn new(allowed: &[String]) -> Self {
        Self {
            allowed: allowed.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether `url` may be called; the reason when not.
    pub fn check(&self, url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("`{url}` is not an http(s) URL"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| format!("`{url}` names no host"))?
            .to_ascii_lowercase();
        let allowed = self
            .allowed
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => *pattern == host,
            });
        if allowed {
            Ok(())
        } else {
            Err(format!(
                "webhook host `{host}` is not in notify.webhook_hosts ({})",
                if self.allowed.is_empty() {
                    "empty: no webhooks allowed".to_string()
                } else {
                    self.allowed.join(", ")
                }
            ))
        }
    }
}
