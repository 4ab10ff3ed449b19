//! A report over a seeded history (real sled store), checked against figures
//! worked out by hand below.

use anxin_proto::v1::{Alert, AlertState, EventKind, Staff, StaffRole};
use anxin_server::{desks::admin::AdminDesk, domain::reports, domain::rights::Principal, store};

const MIN: i64 = 60_000;

struct Seed {
    id: u64,
    community: &'static str,
    kind: EventKind,
    created: i64,
    /// Offsets from creation; 0 = never.
    ack: i64,
    arrive: i64,
    state: AlertState,
    outcome: &'static str,
}

fn alert(seed: &Seed) -> Alert {
    let mut alert = Alert {
        id: seed.id.to_string(),
        community_id: seed.community.into(),
        kind: seed.kind as i32,
        created_ms: seed.created,
        outcome: seed.outcome.into(),
        ..Default::default()
    };
    alert.set_state(seed.state);
    if seed.ack > 0 {
        alert.acknowledged_ms = seed.created + seed.ack;
    }
    if seed.arrive > 0 {
        alert.on_scene_ms = seed.created + seed.arrive;
    }
    alert
}

#[test]
fn report_figures_match_the_hand_computed_ones() {
    use AlertState::*;
    use EventKind::*;
    let dir = tempfile::tempdir().unwrap();
    let store = store::open_sled(dir.path()).unwrap();
    let from = 1_000_000;
    let to = 2_000_000;
    let seeds = [
        Seed {
            id: 1,
            community: "c-a",
            kind: Sos,
            created: 1_000_000,
            ack: 20_000,
            arrive: 10 * MIN,
            state: Resolved,
            outcome: "attended",
        },
        Seed {
            id: 2,
            community: "c-a",
            kind: Fall,
            created: 1_100_000,
            ack: 45_000,
            arrive: 15 * MIN,
            state: Resolved,
            outcome: "hospital",
        },
        Seed {
            id: 3,
            community: "c-a",
            kind: Sos,
            created: 1_200_000,
            ack: 90_000,
            arrive: 20 * MIN,
            state: Resolved,
            outcome: "attended",
        },
        Seed {
            id: 4,
            community: "c-a",
            kind: Sos,
            created: 1_300_000,
            ack: 0,
            arrive: 0,
            state: Cancelled,
            outcome: "cancelled_by_resident",
        },
        Seed {
            id: 5,
            community: "c-a",
            kind: Inactivity,
            created: 1_400_000,
            ack: 30_000,
            arrive: 0,
            state: Acknowledged,
            outcome: "",
        },
        // Outside the period, and another community: not counted.
        Seed {
            id: 6,
            community: "c-a",
            kind: Sos,
            created: 2_000_000,
            ack: 10_000,
            arrive: 0,
            state: Acknowledged,
            outcome: "",
        },
        Seed {
            id: 7,
            community: "c-b",
            kind: Sos,
            created: 1_500_000,
            ack: 10_000,
            arrive: 0,
            state: Acknowledged,
            outcome: "",
        },
    ];
    for seed in &seeds {
        store.import_alert(&alert(seed)).unwrap();
    }
    let admin = AdminDesk::new(store, MIN, Default::default());
    let report = admin.report(&Principal::Admin, "c-a", from, to).unwrap();

    assert_eq!(report.alerts, 5);
    // Acknowledged: 20 s, 45 s, 90 s, 30 s → sorted 20, 30, 45, 90.
    // Nearest rank: median = ceil(0.5·4) = 2nd = 30 s; p90 = ceil(3.6) = 4th
    // = 90 s; p99 = 4th = 90 s.
    let ack = report.time_to_acknowledge.unwrap();
    assert_eq!(
        (ack.count, ack.median_ms, ack.p90_ms, ack.p99_ms),
        (4, 30_000, 90_000, 90_000)
    );
    // Arrived: 10, 15, 20 min → median = 2nd = 15 min; p90 = ceil(2.7) = 3rd.
    let arrive = report.time_to_arrive.unwrap();
    assert_eq!(
        (arrive.count, arrive.median_ms, arrive.p90_ms, arrive.p99_ms),
        (3, 15 * MIN, 20 * MIN, 20 * MIN)
    );
    // Within 60 s: alerts 1, 2, 5 of the 4 not cancelled (1, 2, 3, 5).
    assert_eq!(report.target_ms, MIN);
    assert!((report.acknowledged_within_target - 0.75).abs() < 1e-9);
    let kinds: Vec<(i32, u64)> = report.by_kind.iter().map(|k| (k.kind, k.count)).collect();
    assert_eq!(
        kinds,
        [(Sos as i32, 3), (Fall as i32, 1), (Inactivity as i32, 1)]
    );
    let outcomes: Vec<(&str, u64)> = report
        .by_outcome
        .iter()
        .map(|o| (o.outcome.as_str(), o.count))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("attended", 2),
            ("cancelled_by_resident", 1),
            ("hospital", 1),
            ("open", 1)
        ]
    );

    let csv = reports::to_csv(&report);
    assert!(csv.starts_with("metric,value\n"), "{csv}");
    assert!(
        csv.contains("time_to_acknowledge_median_ms,30000\n"),
        "{csv}"
    );
    assert!(csv.contains("acknowledged_within_target,0.7500\n"), "{csv}");
    assert!(csv.contains("outcome:hospital,1\n"), "{csv}");

    // A supervisor of another community gets no figures for this one.
    let other = Principal::Staff(Staff {
        id: "sup-b".into(),
        role: StaffRole::Supervisor as i32,
        communities: vec!["c-b".into()],
        active: true,
        ..Default::default()
    });
    assert!(admin.report(&other, "c-a", from, to).is_err());
    assert_eq!(admin.report(&other, "c-b", from, to).unwrap().alerts, 1);
}
