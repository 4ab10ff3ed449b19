//! `anxin-sim verify`: the checker. Every event the ledger says was acked
//! `stored` must exist exactly once at the server; every such P0 event must
//! belong to exactly one alert (an incident may hold several events), and
//! no P2/P3 event to any.

use std::{
    collections::{BTreeSet, HashMap},
    path::Path,
};

use serde::Serialize;

use crate::ledger;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub stored_in_ledger: usize,
    pub found_at_server: usize,
    /// Stored-acked events the server does not have: lost.
    pub missing: Vec<String>,
    /// Events the server holds more than once.
    pub duplicated: Vec<String>,
    /// Stored P0 events not in exactly one alert, or routine events in one.
    pub alert_mismatches: Vec<String>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.missing.is_empty() && self.duplicated.is_empty() && self.alert_mismatches.is_empty()
    }
}

async fn get_json(
    client: &reqwest::Client,
    url: &str,
    token: &str,
) -> anyhow::Result<serde_json::Value> {
    let response = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?;
    Ok(response.json().await?)
}

fn seq_of(value: &serde_json::Value) -> Option<u64> {
    match value {
        serde_json::Value::String(s) => s.parse().ok(),
        other => other.as_u64(),
    }
}

pub async fn run(ledger_path: &Path, server: &str, token: &str) -> anyhow::Result<Report> {
    let entries = ledger::read(ledger_path)?;
    let mut kinds: HashMap<(String, u64), String> = HashMap::new();
    let mut stored: BTreeSet<(String, u64)> = BTreeSet::new();
    for entry in entries {
        match entry.e.as_str() {
            "sent" => {
                kinds.insert((entry.device.clone(), entry.seq), entry.kind);
            }
            "stored" => {
                stored.insert((entry.device, entry.seq));
            }
            _ => {}
        }
    }
    let server = server.trim_end_matches('/');
    let client = reqwest::Client::new();

    let mut at_server: HashMap<(String, u64), usize> = HashMap::new();
    let devices: BTreeSet<&String> = stored.iter().map(|(d, _)| d).collect();
    for device in devices {
        let body = get_json(
            &client,
            &format!("{server}/api/v1/devices/{device}/events"),
            token,
        )
        .await?;
        for event in body["events"].as_array().into_iter().flatten() {
            if let Some(seq) = seq_of(&event["seq"]) {
                *at_server.entry((device.clone(), seq)).or_default() += 1;
            }
        }
    }
    let alerts = get_json(&client, &format!("{server}/api/v1/alerts"), token).await?;
    let mut alert_count: HashMap<(String, u64), usize> = HashMap::new();
    for alert in alerts["alerts"].as_array().into_iter().flatten() {
        for event in alert["events"].as_array().into_iter().flatten() {
            if let (Some(device), Some(seq)) = (event["deviceId"].as_str(), seq_of(&event["seq"])) {
                *alert_count.entry((device.to_string(), seq)).or_default() += 1;
            }
        }
    }

    let mut report = Report {
        stored_in_ledger: stored.len(),
        ..Default::default()
    };
    for identity in &stored {
        let name = format!("{}#{}", identity.0, identity.1);
        match at_server.get(identity).copied().unwrap_or(0) {
            0 => report.missing.push(name.clone()),
            1 => report.found_at_server += 1,
            _ => {
                report.found_at_server += 1;
                report.duplicated.push(name.clone());
            }
        }
        let priority = kinds
            .get(identity)
            .and_then(|k| anxin_proto::EventKind::from_str_name(k))
            .map_or(anxin_proto::Priority::P3, anxin_proto::priority_of);
        let alerts = alert_count.get(identity).copied().unwrap_or(0);
        let expected = match priority {
            anxin_proto::Priority::P0 => alerts == 1,
            anxin_proto::Priority::P1 => alerts <= 1,
            _ => alerts == 0,
        };
        if !expected {
            report
                .alert_mismatches
                .push(format!("{name}: {alerts} alerts"));
        }
    }
    Ok(report)
}
