//! The alert lifecycle: which transitions are legal.
//!
//! `new → offered → acknowledged → en_route → on_scene → resolved(outcome)`,
//! plus `cancelled`. An illegal transition is a typed error, never a silent
//! no-op.

use anxin_proto::v1::AlertState;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an alert that is {} cannot become {}", name(*.from), name(*.to))]
pub struct IllegalTransition {
    pub from: AlertState,
    pub to: AlertState,
}

/// Short lower-case state name, as used in the REST API.
pub fn name(state: AlertState) -> &'static str {
    match state {
        AlertState::Unspecified => "unspecified",
        AlertState::New => "new",
        AlertState::Offered => "offered",
        AlertState::Acknowledged => "acknowledged",
        AlertState::EnRoute => "en_route",
        AlertState::OnScene => "on_scene",
        AlertState::Resolved => "resolved",
        AlertState::Cancelled => "cancelled",
    }
}

/// Parses a REST state name (`new`) or the proto name (`ALERT_STATE_NEW`).
pub fn parse(text: &str) -> Option<AlertState> {
    AlertState::from_str_name(text).or_else(|| {
        AlertState::from_str_name(&format!("ALERT_STATE_{}", text.to_ascii_uppercase()))
    })
}

/// Every state an alert may be in until it is resolved or cancelled.
pub const OPEN_STATES: [AlertState; 5] = [
    AlertState::New,
    AlertState::Offered,
    AlertState::Acknowledged,
    AlertState::EnRoute,
    AlertState::OnScene,
];

/// Whether `states` names open states only (and at least one): such a
/// query is answered from the open alerts, not the history.
pub fn only_open(states: &[AlertState]) -> bool {
    !states.is_empty() && states.iter().all(|s| is_open(*s))
}

pub fn is_open(state: AlertState) -> bool {
    !matches!(state, AlertState::Resolved | AlertState::Cancelled)
}

/// Checks `from → to`.
pub fn check(from: AlertState, to: AlertState) -> Result<(), IllegalTransition> {
    use AlertState::*;
    let legal = matches!(
        (from, to),
        (New, Offered | Acknowledged | Cancelled)
            | (Offered, Offered | Acknowledged | Cancelled)
            | (Acknowledged, EnRoute | OnScene | Resolved | Cancelled)
            | (EnRoute, OnScene | Resolved)
            | (OnScene, Resolved)
    );
    if legal {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use AlertState::*;

    #[test]
    fn the_happy_path_is_legal() {
        for (from, to) in [
            (New, Offered),
            (Offered, Acknowledged),
            (Acknowledged, EnRoute),
            (EnRoute, OnScene),
            (OnScene, Resolved),
        ] {
            check(from, to).unwrap();
        }
    }

    #[test]
    fn closed_alerts_stay_closed_and_nothing_skips_acknowledgement() {
        let err = check(Resolved, Acknowledged).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an alert that is resolved cannot become acknowledged"
        );
        assert!(check(Cancelled, New).is_err());
        assert!(check(New, Resolved).is_err());
        assert!(check(Acknowledged, Acknowledged).is_err());
    }

    /// The whole matrix: exactly these moves are legal, every other pair is
    /// refused with a typed error.
    #[test]
    fn every_legal_move_and_only_those() {
        let states = [
            Unspecified,
            New,
            Offered,
            Acknowledged,
            EnRoute,
            OnScene,
            Resolved,
            Cancelled,
        ];
        let legal = [
            (New, Offered),
            (New, Acknowledged),
            (New, Cancelled),
            (Offered, Offered),
            (Offered, Acknowledged),
            (Offered, Cancelled),
            (Acknowledged, EnRoute),
            (Acknowledged, OnScene),
            (Acknowledged, Resolved),
            (Acknowledged, Cancelled),
            (EnRoute, OnScene),
            (EnRoute, Resolved),
            (OnScene, Resolved),
        ];
        for from in states {
            for to in states {
                let expected = legal.contains(&(from, to));
                assert_eq!(
                    check(from, to).is_ok(),
                    expected,
                    "{} → {}",
                    name(from),
                    name(to)
                );
            }
        }
    }

    #[test]
    fn parses_both_state_spellings() {
        assert_eq!(parse("new"), Some(New));
        assert_eq!(parse("en_route"), Some(EnRoute));
        assert_eq!(parse("ALERT_STATE_RESOLVED"), Some(Resolved));
        assert_eq!(parse("bogus"), None);
    }
}
