//! A fall joining an offered inactivity alert raises it to P0, and the offer
//! gets P0's shorter deadline (real sled store, the desk as the server runs
//! it).

use std::sync::Arc;

use anxin_proto::{
    DeviceEvent, EventKind, now_ms,
    v1::{AlertState, Place, PlaceLevel, Priority, Resident, Staff, StaffRole, UplinkEvent},
};
use anxin_server::{
    desks::admin::AdminDesk,
    desks::alerts::{AlertDesk, DeskPolicy},
    desks::gateways::ConnectedGateways,
    desks::outbox::Notifier,
    domain::incidents::{Decision, IncidentPolicy, Origin},
    domain::rights::Principal,
    store::{self, Committed},
};

fn event(seq: u64, kind: EventKind) -> UplinkEvent {
    UplinkEvent {
        event: Some(DeviceEvent {
            device_id: "room-1".into(),
            seq,
            kind: kind as i32,
            ..Default::default()
        }),
        stored_ms: 0,
    }
}

#[tokio::test]
async fn a_fall_joining_an_offered_alert_shortens_its_deadline_to_p0s() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::open_sled(dir.path()).unwrap();
    let admin = AdminDesk::new(store.clone(), 60_000, Default::default());
    for (id, level, parent) in [
        ("city", PlaceLevel::City, ""),
        ("district", PlaceLevel::District, "city"),
        ("street", PlaceLevel::Street, "district"),
        ("c-1", PlaceLevel::Community, "street"),
    ] {
        let place = Place {
            id: id.into(),
            name: id.into(),
            level: level as i32,
            parent_id: parent.into(),
            ..Default::default()
        };
        admin.put_place(&Principal::Admin, place).unwrap();
    }
    let resident = Resident {
        id: "r-1".into(),
        name: "R".into(),
        community_id: "c-1".into(),
        address: "1".into(),
        ..Default::default()
    };
    admin.put_resident(&Principal::Admin, resident).unwrap();
    let carer = Staff {
        id: "li".into(),
        name: "Li".into(),
        role: StaffRole::Carer as i32,
        communities: vec!["c-1".into()],
        active: true,
        ..Default::default()
    };
    admin.put_staff(&Principal::Admin, carer).unwrap();

    let policy = DeskPolicy {
        incidents: IncidentPolicy {
            window_ms: 600_000,
            cancel_grace_ms: 60_000,
        },
        p0_deadline_ms: 60_000,
        p1_deadline_ms: 300_000,
        utc_offset_minutes: 480,
        emergency_hook: String::new(),
        callout: anxin_server::domain::family::CalloutRules {
            answer_ms: 180_000,
            rounds: 2,
            p0_limit_ms: 180_000,
            limit_ms: 900_000,
            utc_offset_minutes: 480,
        },
        signals: Default::default(),
    };
    let notifier = Notifier::new(store.clone());
    let desk = AlertDesk::new(
        store.clone(),
        Arc::new(ConnectedGateways::default()),
        policy.clone(),
        notifier,
    );
    let origin = Origin {
        resident_id: "r-1".into(),
        community_id: "c-1".into(),
        ..Default::default()
    };

    let Committed::New {
        alert: Some(raised),
    } = store
        .commit_event(
            "gw",
            &event(1, EventKind::Inactivity),
            now_ms(),
            &origin,
            &policy.incidents,
        )
        .unwrap()
    else {
        panic!("no alert raised")
    };
    let id = raised.0.id.clone();
    desk.route(&id).await;
    let offered = store.alert(&id).unwrap();
    assert_eq!(offered.state(), AlertState::Offered);
    assert_eq!(offered.offer_deadline_ms, offered.offered_ms + 300_000);

    let Committed::New {
        alert: Some(joined),
    } = store
        .commit_event(
            "gw",
            &event(2, EventKind::Fall),
            now_ms(),
            &origin,
            &policy.incidents,
        )
        .unwrap()
    else {
        panic!("the fall joined nothing")
    };
    assert_eq!(
        joined.1,
        Decision::Attach {
            priority_raised: true
        }
    );
    desk.tighten_deadline(&id).await;
    let tightened = store.alert(&id).unwrap();
    assert_eq!(tightened.priority, Priority::P0 as i32);
    assert_eq!(tightened.offer_deadline_ms, offered.offered_ms + 60_000);
    // The stored timer moved with it.
    let (due, next) = store.due_offers(offered.offered_ms + 60_000).unwrap();
    assert_eq!((due, next), (vec![id.clone()], None));
}
