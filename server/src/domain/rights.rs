//! Who a caller is and what each kind of caller may do: roles, the
//! communities a person serves, the needs of each call. Pure rules; the
//! desks check them ([`crate::desks::audit::guard`] audits each refusal)
//! and `desks/auth.rs` finds the principal behind a token.

use anxin_proto::v1::{Staff, StaffRole};
use sha2::{Digest, Sha256};

/// A call refused by the caller's rights: what they may not do, or where.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Forbidden(pub String);

#[derive(Debug, Clone)]
pub enum Principal {
    /// The bootstrap administrator from the config.
    Admin,
    Staff(Staff),
    Gateway(String),
    /// A resident's family member, signed in from a link: sees their own
    /// resident's alerts through the family view and answers them, nothing
    /// else (no staff need is ever allowed).
    Family(FamilyMember),
}

#[derive(Debug, Clone, Default)]
pub struct FamilyMember {
    pub resident_id: String,
    /// Their phone (E.164): their identity among the resident's contacts.
    pub phone: String,
    pub name: String,
    pub language: String,
}

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// See alerts and the staff board.
    ViewAlerts,
    /// Act on alerts.
    Act,
    /// Read residents' sensitive fields (audited).
    ReadResidents,
    /// Reports.
    Reports,
    /// The audit log.
    Audit,
    /// Create and change the directory, issue tokens, import.
    Administer,
}

impl Principal {
    /// How the audit log names this caller.
    pub fn name(&self) -> String {
        match self {
            Principal::Admin => "admin".into(),
            Principal::Staff(s) => s.id.clone(),
            Principal::Gateway(id) => format!("gateway/{id}"),
            Principal::Family(f) => format!("family/{}", f.phone),
        }
    }

    /// How a person reading about this caller's action knows them.
    pub fn display_name(&self) -> String {
        match self {
            Principal::Staff(s) if !s.name.is_empty() => s.name.clone(),
            Principal::Family(f) if !f.name.is_empty() => f.name.clone(),
            _ => self.name(),
        }
    }

    pub fn role(&self) -> Option<StaffRole> {
        match self {
            Principal::Admin => Some(StaffRole::Admin),
            Principal::Staff(s) => Some(s.role()),
            Principal::Gateway(_) | Principal::Family(_) => None,
        }
    }

    pub fn is_field_staff(&self) -> bool {
        matches!(self.role(), Some(StaffRole::Carer | StaffRole::Nurse))
    }

    /// Whether this caller's scope covers `community_id`. Records without a
    /// community (a device the directory does not know) are visible only to
    /// callers who serve every community.
    pub fn sees(&self, community_id: &str) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Staff(s) => s
                .communities
                .iter()
                .any(|c| c == "*" || (!community_id.is_empty() && c == community_id)),
            Principal::Gateway(_) | Principal::Family(_) => false,
        }
    }

    /// The communities whose records this caller may list; `None`: all
    /// of them (the administrator, city-wide staff).
    pub fn scope(&self) -> Option<Vec<String>> {
        match self {
            Principal::Admin => None,
            Principal::Staff(s) if s.communities.iter().any(|c| c == "*") => None,
            Principal::Staff(s) => Some(s.communities.clone()),
            Principal::Gateway(_) | Principal::Family(_) => Some(Vec::new()),
        }
    }

    pub fn allows(&self, need: Need) -> bool {
        use StaffRole::*;
        let Some(role) = self.role() else {
            return false;
        };
        match need {
            Need::ViewAlerts | Need::Act | Need::ReadResidents => {
                matches!(role, Carer | Nurse | Dispatcher | Supervisor | Admin)
            }
            Need::Reports => matches!(role, Dispatcher | Supervisor | Admin),
            Need::Audit => matches!(role, Supervisor | Admin),
            Need::Administer => role == Admin,
        }
    }

    /// `need` in `community_id` (or anywhere, if `None`).
    pub fn require(&self, need: Need, community_id: Option<&str>) -> Result<(), Forbidden> {
        if !self.allows(need) {
            return Err(Forbidden(format!(
                "{} may not {}",
                self.name(),
                need_text(need)
            )));
        }
        if let Some(community) = community_id
            && !self.sees(community)
        {
            return Err(Forbidden(format!(
                "{} does not serve community `{community}`",
                self.name()
            )));
        }
        Ok(())
    }
}

fn need_text(need: Need) -> &'static str {
    match need {
        Need::ViewAlerts => "see alerts",
        Need::Act => "act on alerts",
        Need::ReadResidents => "read residents' records",
        Need::Reports => "read reports",
        Need::Audit => "read the audit log",
        Need::Administer => "administer the directory",
    }
}

pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token: 32 bytes of OS randomness, hex.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("anx_{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carer(communities: &[&str]) -> Principal {
        Principal::Staff(Staff {
            id: "li".into(),
            role: StaffRole::Carer as i32,
            communities: communities.iter().map(|c| c.to_string()).collect(),
            active: true,
            ..Default::default()
        })
    }

    #[test]
    fn a_carer_acts_in_their_community_only() {
        let li = carer(&["c-a"]);
        li.require(Need::Act, Some("c-a")).unwrap();
        let err = li.require(Need::Act, Some("c-b")).unwrap_err();
        assert!(err.to_string().contains("c-b"), "{err}");
        assert!(li.require(Need::Administer, None).is_err());
        assert!(li.require(Need::Audit, None).is_err());
        assert!(
            !li.sees(""),
            "unknown-community alerts are for city-wide staff"
        );
        assert!(carer(&["*"]).sees(""));
    }

    #[test]
    fn gateways_get_nothing_but_their_uplink() {
        let gw = Principal::Gateway("gw-1".into());
        for need in [
            Need::ViewAlerts,
            Need::Act,
            Need::ReadResidents,
            Need::Administer,
        ] {
            assert!(gw.require(need, None).is_err());
        }
    }

    #[test]
    fn family_members_get_no_staff_right_anywhere() {
        let daughter = Principal::Family(FamilyMember {
            resident_id: "r-1".into(),
            phone: "+8613800000000".into(),
            ..Default::default()
        });
        for need in [
            Need::ViewAlerts,
            Need::Act,
            Need::ReadResidents,
            Need::Reports,
            Need::Audit,
            Need::Administer,
        ] {
            assert!(daughter.require(need, None).is_err());
        }
        assert!(!daughter.sees(""));
        assert_eq!(daughter.scope(), Some(Vec::new()));
    }

    #[test]
    fn tokens_are_random_and_digests_stable() {
        assert_ne!(new_token(), new_token());
        assert_eq!(digest("x"), digest("x"));
        assert_eq!(digest("x").len(), 64);
    }
}
