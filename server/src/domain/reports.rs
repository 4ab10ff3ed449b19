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

use anxin_proto::v1::{
    Alert, AlertState, CheckinDay, EventKind, KindCount, OutcomeCount, Percentiles, Report, Visit,
};

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
        ..Default::default()
    }
}

/// Adds the welfare figures to a report (same community and period):
/// check-in days judged on local days that start in `[from_ms, to_ms)`
/// (ok and late count as checked in), the missed check-in alerts created in
/// the period (times to acknowledge and to resolve), and planned visits of
/// those days that have ended (every one is then done or missed).
pub fn add_welfare(
    report: &mut Report,
    days: &[CheckinDay],
    visits: &[Visit],
    alerts: &[Alert],
    utc_offset_minutes: i32,
    now_ms: i64,
) {
    let community = report.community_id.clone();
    let (from_ms, to_ms) = (report.from_ms, report.to_ms);
    let in_period = |day: i32| {
        let start = crate::domain::calendar::day_start_ms(day, utc_offset_minutes);
        start >= from_ms && (to_ms == 0 || start < to_ms)
    };
    let ours = |c: &str| community.is_empty() || c == community;
    let judged: Vec<&CheckinDay> = days
        .iter()
        .filter(|d| ours(&d.community_id) && in_period(d.day))
        .collect();
    report.checkin_days = judged.len() as u64;
    report.checkin_days_ok = judged
        .iter()
        .filter(|d| d.outcome == "ok" || d.outcome == "late")
        .count() as u64;
    report.checkins_missed = judged.iter().filter(|d| d.outcome == "missed").count() as u64;
    report.checkin_coverage = if judged.is_empty() {
        0.0
    } else {
        report.checkin_days_ok as f64 / judged.len() as f64
    };
    let missed: Vec<&Alert> = alerts
        .iter()
        .filter(|a| a.kind == EventKind::CheckinMissed as i32 && ours(&a.community_id))
        .filter(|a| a.created_ms >= from_ms && (to_ms == 0 || a.created_ms < to_ms))
        .collect();
    report.missed_checkin_to_acknowledge = Some(percentiles(
        missed
            .iter()
            .filter(|a| a.acknowledged_ms > 0)
            .map(|a| a.acknowledged_ms - a.created_ms)
            .collect(),
    ));
    report.missed_checkin_to_resolve = Some(percentiles(
        missed
            .iter()
            .filter(|a| a.resolved_ms > 0)
            .map(|a| a.resolved_ms - a.created_ms)
            .collect(),
    ));
    let ended =
        |day: i32| crate::domain::calendar::day_start_ms(day + 1, utc_offset_minutes) <= now_ms;
    let planned: Vec<&Visit> = visits
        .iter()
        .filter(|v| ours(&v.community_id) && in_period(v.day) && ended(v.day))
        .collect();
    report.visits_planned = planned.len() as u64;
    report.visits_done = planned.iter().filter(|v| v.status == "done").count() as u64;
    report.visits_missed = planned.iter().filter(|v| v.status == "missed").count() as u64;
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
    let percentile_rows = |rows: &mut Vec<(String, String)>, name: &str, p: Option<Percentiles>| {
        let p = p.unwrap_or_default();
        rows.push((format!("{name}_count"), p.count.to_string()));
        rows.push((format!("{name}_median_ms"), p.median_ms.to_string()));
        rows.push((format!("{name}_p90_ms"), p.p90_ms.to_string()));
        rows.push((format!("{name}_p99_ms"), p.p99_ms.to_string()));
    };
    percentile_rows(&mut rows, "time_to_acknowledge", report.time_to_acknowledge);
    percentile_rows(&mut rows, "time_to_arrive", report.time_to_arrive);
    rows.push(("target_ms".into(), report.target_ms.to_string()));
    rows.push((
        "acknowledged_within_target".into(),
        format!("{:.4}", report.acknowledged_within_target),
    ));
    rows.push(("checkin_days".into(), report.checkin_days.to_string()));
    rows.push(("checkin_days_ok".into(), report.checkin_days_ok.to_string()));
    rows.push(("checkins_missed".into(), report.checkins_missed.to_string()));
    rows.push((
        "checkin_coverage".into(),
        format!("{:.4}", report.checkin_coverage),
    ));
    percentile_rows(
        &mut rows,
        "missed_checkin_to_acknowledge",
        report.missed_checkin_to_acknowledge,
    );
    percentile_rows(
        &mut rows,
        "missed_checkin_to_resolve",
        report.missed_checkin_to_resolve,
    );
    rows.push(("visits_planned".into(), report.visits_planned.to_string()));
    rows.push(("visits_done".into(), report.visits_done.to_string()));
    rows.push(("visits_missed".into(), report.visits_missed.to_string()));
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

    #[test]
    fn welfare_figures_match_a_hand_count() {
        use crate::domain::calendar::day_start_ms;
        const OFFSET: i32 = 480;
        let day = |resident: &str, d: i32, community: &str, outcome: &str| CheckinDay {
            resident_id: resident.into(),
            day: d,
            community_id: community.into(),
            outcome: outcome.into(),
            ..Default::default()
        };
        let days = [
            day("r1", 10, "c-1", "ok"),
            day("r2", 10, "c-1", "late"),
            day("r3", 10, "c-1", "missed"),
            day("r1", 11, "c-1", "ok"),
            day("r2", 11, "c-1", "missed"),
            day("r9", 10, "c-2", "missed"),
            day("r1", 12, "c-1", "ok"),
        ];
        let t0 = day_start_ms(10, OFFSET) + 10 * 3_600_000;
        let alert = |id: &str, kind: EventKind, community: &str, ack: i64, resolved: i64| Alert {
            id: id.into(),
            kind: kind as i32,
            community_id: community.into(),
            created_ms: t0,
            acknowledged_ms: if ack > 0 { t0 + ack } else { 0 },
            resolved_ms: if resolved > 0 { t0 + resolved } else { 0 },
            ..Default::default()
        };
        let alerts = [
            alert("1", EventKind::CheckinMissed, "c-1", 60_000, 600_000),
            alert("2", EventKind::CheckinMissed, "c-1", 120_000, 1_200_000),
            alert("3", EventKind::CheckinMissed, "c-2", 5_000, 0),
            alert("4", EventKind::Sos, "c-1", 1_000, 2_000),
        ];
        let visit = |plan: &str, d: i32, community: &str, status: &str| Visit {
            plan_id: plan.into(),
            day: d,
            community_id: community.into(),
            status: status.into(),
            ..Default::default()
        };
        let visits = [
            visit("v1", 10, "c-1", "done"),
            visit("v2", 10, "c-1", "missed"),
            visit("v1", 11, "c-1", "done"),
            visit("v2", 12, "c-1", "done"),
            visit("v9", 10, "c-2", "missed"),
        ];
        let period = |now_ms: i64| {
            let mut report = Report {
                community_id: "c-1".into(),
                from_ms: day_start_ms(10, OFFSET),
                to_ms: day_start_ms(12, OFFSET),
                ..Default::default()
            };
            add_welfare(&mut report, &days, &visits, &alerts, OFFSET, now_ms);
            report
        };
        let report = period(day_start_ms(13, OFFSET));
        // Days 10 and 11 of c-1: ok, late, missed, ok, missed.
        assert_eq!(report.checkin_days, 5);
        assert_eq!(report.checkin_days_ok, 3);
        assert_eq!(report.checkins_missed, 2);
        assert!((report.checkin_coverage - 0.6).abs() < 1e-9);
        // Alerts 1 and 2 (3 is another community's, 4 is no check-in).
        let ack = report.missed_checkin_to_acknowledge.unwrap();
        assert_eq!((ack.count, ack.median_ms, ack.p90_ms), (2, 60_000, 120_000));
        let resolve = report.missed_checkin_to_resolve.unwrap();
        assert_eq!(
            (resolve.count, resolve.median_ms, resolve.p90_ms),
            (2, 600_000, 1_200_000)
        );
        // Visits of days 10 and 11: done, missed, done.
        assert_eq!(
            (
                report.visits_planned,
                report.visits_done,
                report.visits_missed
            ),
            (3, 2, 1)
        );
        // While day 11 is still going on, only day 10's visits count.
        let report = period(day_start_ms(11, OFFSET) + 3_600_000);
        assert_eq!(
            (
                report.visits_planned,
                report.visits_done,
                report.visits_missed
            ),
            (2, 1, 1)
        );
        // All communities: c-2's missed day, alert and visit join in.
        let mut all = Report {
            from_ms: day_start_ms(10, OFFSET),
            to_ms: day_start_ms(12, OFFSET),
            ..Default::default()
        };
        add_welfare(
            &mut all,
            &days,
            &visits,
            &alerts,
            OFFSET,
            day_start_ms(13, OFFSET),
        );
        assert_eq!((all.checkin_days, all.checkins_missed), (6, 3));
        assert_eq!(all.missed_checkin_to_acknowledge.unwrap().count, 3);
        assert_eq!(all.visits_missed, 2);
        let csv = to_csv(&report);
        assert!(csv.contains("visits_planned,2\n"), "{csv}");
        assert!(csv.contains("checkin_coverage,0.6000\n"), "{csv}");
    }
}
