//! Reports: per community and period, how fast people answered.
//!
//! Over the alerts created in `[from_ms, to_ms)` of one community (or all):
//! time to acknowledge (`acknowledged_ms - created_ms`) and time to arrive
//! (`on_scene_ms - created_ms`) as median, p90 and p99 by the nearest-rank
//! method (the smallest value with at least p% of the sample at or below
//! it: no interpolation, so every figure is a time that really happened);
//! the share of alerts acknowledged within the target over all alerts that
//! were not cancelled by the resident; counts by kind and by outcome.

use std::collections::BTreeMap;

use anxin_proto::v1::{Alert, AlertState, EventKind, KindCount, OutcomeCount, Percentiles, Report};

/// Nearest-rank percentile of a sorted sample.
fn nearest_rank(sorted: &[i64], percent: u32) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (u64::from(percent) * sorted.len() as u64)
        .div_ceil(100)
        .max(1) as usize;
    sorted[rank - 1]
}

fn percentiles(mut sample: Vec<i64>) -> Percentiles {
    sample.sort_unstable();
    Percentiles {
        count: sample.len() as u64,
        median_ms: nearest_rank(&sample, 50),
        p90_ms: nearest_rank(&sample, 90),
        p99_ms: nearest_rank(&sample, 99),
    }
}

pub fn compute(
    alerts: &[Alert],
    community_id: &str,
    from_ms: i64,
    to_ms: i64,
    target_ms: i64,
) -> Report {
    let chosen: Vec<&Alert> = alerts
        .iter()
        .filter(|a| community_id.is_empty() || a.community_id == community_id)
        .filter(|a| a.created_ms >= from_ms && (to_ms == 0 || a.created_ms < to_ms))
        .collect();
    let to_ack: Vec<i64> = chosen
        .iter()
        .filter(|a| a.acknowledged_ms > 0)
        .map(|a| a.acknowledged_ms - a.created_ms)
        .collect();
    let to_arrive: Vec<i64> = chosen
        .iter()
        .filter(|a| a.on_scene_ms > 0)
        .map(|a| a.on_scene_ms - a.created_ms)
        .collect();
    let answerable = chosen
        .iter()
        .filter(|a| a.state() != AlertState::Cancelled || a.acknowledged_ms > 0)
        .count();
    let in_target = to_ack.iter().filter(|t| **t <= target_ms).count();
    let mut by_kind: BTreeMap<i32, u64> = BTreeMap::new();
    let mut by_outcome: BTreeMap<String, u64> = BTreeMap::new();
    for alert in &chosen {
        *by_kind.entry(alert.kind).or_default() += 1;
        let outcome = match alert.state() {
            AlertState::Resolved | AlertState::Cancelled => alert.outcome.clone(),
            _ => "open".into(),
        };
        *by_outcome.entry(outcome).or_default() += 1;
    }
    Report {
        community_id: community_id.to_string(),
        from_ms,
        to_ms,
        alerts: chosen.len() as u64,
        time_to_acknowledge: Some(percentiles(to_ack)),
        time_to_arrive: Some(percentiles(to_arrive)),
        target_ms,
        acknowledged_within_target: if answerable == 0 {
            0.0
        } else {
            in_target as f64 / answerable as f64
        },
        by_kind: by_kind
            .into_iter()
            .map(|(kind, count)| KindCount { kind, count })
            .collect(),
        by_outcome: by_outcome
            .into_iter()
            .map(|(outcome, count)| OutcomeCount { outcome, count })
            .collect(),
        community_name: String::new(),
    }
}

/// The report as CSV: one `metric,value` row per figure.
pub fn to_csv(report: &Report) -> String {
    let mut rows = vec![
        ("community".to_string(), report.community_id.clone()),
        ("community_name".into(), report.community_name.clone()),
        ("from_ms".into(), report.from_ms.to_string()),
        ("to_ms".into(), report.to_ms.to_string()),
        ("alerts".into(), report.alerts.to_string()),
    ];
    for (name, p) in [
        ("time_to_acknowledge", report.time_to_acknowledge),
        ("time_to_arrive", report.time_to_arrive),
    ] {
        let p = p.unwrap_or_default();
        rows.push((format!("{name}_count"), p.count.to_string()));
        rows.push((format!("{name}_median_ms"), p.median_ms.to_string()));
        rows.push((format!("{name}_p90_ms"), p.p90_ms.to_string()));
        rows.push((format!("{name}_p99_ms"), p.p99_ms.to_string()));
    }
    rows.push(("target_ms".into(), report.target_ms.to_string()));
    rows.push((
        "acknowledged_within_target".into(),
        format!("{:.4}", report.acknowledged_within_target),
    ));
    for k in &report.by_kind {
        let name = EventKind::try_from(k.kind).map_or("UNKNOWN", |k| k.as_str_name());
        rows.push((format!("kind:{name}"), k.count.to_string()));
    }
    for o in &report.by_outcome {
        rows.push((format!("outcome:{}", o.outcome), o.count.to_string()));
    }
    let mut out = String::from("metric,value\n");
    for (metric, value) in rows {
        out.push_str(&format!("{},{}\n", csv_field(&metric), csv_field(&value)));
    }
    out
}

/// One CSV cell. A cell a spreadsheet would read as a formula (starting
/// with `=`, `+`, `-`, `@`, a tab or a carriage return: a place named
/// `=HYPERLINK(…)`) gets a leading `'`, so it stays text when the report is
/// opened (CSV injection).
pub fn csv_field(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let text = if formula {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if formula || text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_that_reads_as_a_formula_stays_text() {
        assert_eq!(csv_field("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        for lead in ["+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert!(csv_field(lead).starts_with("\"'"), "{lead}");
        }
        assert_eq!(csv_field("Anzhen, Beijing"), "\"Anzhen, Beijing\"");
        assert_eq!(csv_field("c-007"), "c-007");
    }

    #[test]
    fn nearest_rank_picks_a_real_sample() {
        let sample: Vec<i64> = (1..=10).collect();
        assert_eq!(nearest_rank(&sample, 50), 5);
        assert_eq!(nearest_rank(&sample, 90), 9);
        assert_eq!(nearest_rank(&sample, 99), 10);
        assert_eq!(nearest_rank(&[7], 99), 7);
        assert_eq!(nearest_rank(&[], 50), 0);
    }
}
