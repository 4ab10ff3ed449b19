//! Paged, filtered lists of the directory: the contract both engines keep.
//!
//! A city's directory holds a million residents, so no list is ever built
//! whole. Every list is read in pages in a fixed order, and a page ends with
//! an opaque cursor (`next`) that the caller sends back (`after`) for the
//! page that follows. The order is an index's order, so a row that exists
//! for the whole walk is visited exactly once, whatever is added or removed
//! meanwhile.
//!
//! | list | filter | order |
//! |---|---|---|
//! | residents | none or `community` | community, id |
//! | residents | `search` | matching term, id (each resident once) |
//! | devices | `gateway` / `resident` / none | gateway, id / resident, id / id |
//! | staff | `community` / none | community, id / id |
//! | gateways, places | none | id |
//! | alerts | states, community, time raised | newest first (alert number) |
//!
//! A page looks at no more than [`SCAN_BUDGET`] index entries: when the
//! caller's scope or a filter without an index skips many, a page may hold
//! fewer rows than asked for, with `next` set. `next` absent means the end.
//! A cursor is only meaningful with the filters it was issued for.

use anxin_proto::v1::Resident;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;
/// Index entries one page may look at.
pub const SCAN_BUDGET: usize = 5000;
/// Separates the parts of an index key (community, id); ids never hold it
/// (`directory::check_id`).
pub const SEP: u8 = 0;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// 0: [`DEFAULT_LIMIT`]; at most [`MAX_LIMIT`].
    pub limit: usize,
    /// The `next` of the page before, or empty for the first page.
    pub after: String,
    pub community: String,
    /// Residents: a name, phone or id prefix. Staff: a name or id prefix.
    pub search: String,
    pub gateway: String,
    pub resident: String,
    /// Places: only children of this place.
    pub parent: String,
    /// The communities the caller may see; `None`: every community.
    pub scope: Option<Vec<String>>,
    /// Alerts: only these states (empty: all).
    pub states: Vec<anxin_proto::v1::AlertState>,
    /// Alerts: raised in `[from_ms, to_ms)` (0: unbounded).
    pub from_ms: i64,
    pub to_ms: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

impl<T> Page<T> {
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            next: self.next,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cursor `{0}` is not one this server issued")]
pub struct BadCursor(pub String);

impl ListQuery {
    pub fn limit(&self) -> usize {
        match self.limit {
            0 => DEFAULT_LIMIT,
            n => n.min(MAX_LIMIT),
        }
    }

    /// The index key the cursor stands for (empty: from the start).
    pub fn after_key(&self) -> Result<Vec<u8>, BadCursor> {
        hex::decode(&self.after).map_err(|_| BadCursor(self.after.clone()))
    }

    /// Whether a record of `community` is within the caller's scope.
    pub fn in_scope(&self, community: &str) -> bool {
        match &self.scope {
            None => true,
            Some(list) => list.iter().any(|c| c == community),
        }
    }

    /// The communities to walk, in key order: the filter's one (if the
    /// caller may see it), the caller's own, or `None` for all of them.
    pub fn communities(&self) -> Option<Vec<String>> {
        if !self.community.is_empty() {
            return Some(if self.in_scope(&self.community) {
                vec![self.community.clone()]
            } else {
                Vec::new()
            });
        }
        let mut list = self.scope.clone()?;
        list.sort();
        list.dedup();
        Some(list)
    }

    /// The search as index terms hold it.
    pub fn search_term(&self) -> String {
        normalize(&self.search)
    }
}

impl ListQuery {
    /// Whether a record of `community` passes the community filter and the
    /// caller's scope.
    pub fn wants_community(&self, community: &str) -> bool {
        self.in_scope(community) && (self.community.is_empty() || self.community == community)
    }

    pub fn wants_gateway(&self, gateway: &anxin_proto::v1::GatewayRecord) -> bool {
        self.wants_community(&gateway.community_id)
    }

    pub fn wants_place(&self, place: &anxin_proto::v1::Place) -> bool {
        self.parent.is_empty() || self.parent == place.parent_id
    }

    /// Whether an alert passes the query's filters and the caller's scope.
    pub fn wants_alert(&self, alert: &anxin_proto::v1::Alert) -> bool {
        self.wants_community(&alert.community_id)
            && (self.states.is_empty() || self.states.contains(&alert.state()))
            && (self.from_ms == 0 || alert.created_ms >= self.from_ms)
            && (self.to_ms == 0 || alert.created_ms < self.to_ms)
    }

    /// Whether a staff member passes the search and shares a community
    /// with the caller (or serves every community).
    pub fn wants_staff(&self, staff: &anxin_proto::v1::Staff) -> bool {
        let search = self.search_term();
        let visible = self.scope.is_none()
            || staff
                .communities
                .iter()
                .any(|c| c == "*" || self.in_scope(c));
        visible
            && (search.is_empty()
                || normalize(&staff.name).starts_with(&search)
                || staff.id.to_lowercase().starts_with(&search))
    }

    /// The alert number a cursor stands for: the page starts below it.
    pub fn before_alert(&self) -> Result<u64, BadCursor> {
        let key = self.after_key()?;
        match key.len() {
            0 => Ok(u64::MAX),
            8 => Ok(u64::from_be_bytes(key.try_into().expect("8 bytes"))),
            _ => Err(BadCursor(self.after.clone())),
        }
    }
}

pub fn cursor(key: &[u8]) -> String {
    hex::encode(key)
}

pub fn key(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(SEP);
        }
        out.extend_from_slice(part.as_bytes());
    }
    out
}

/// The parts of an index key (what a cursor decodes to).
pub fn parts(key: &[u8]) -> Vec<String> {
    key.split(|b| *b == SEP)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect()
}

/// A search as typed, as the term index holds it: a phone number by its
/// digits, anything else in lower case.
pub fn normalize(text: &str) -> String {
    let text = text.trim();
    let phone_like = text.chars().any(|c| c.is_ascii_digit())
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '+' | '-' | ' ' | '(' | ')'));
    if phone_like {
        text.chars().filter(char::is_ascii_digit).collect()
    } else {
        text.to_lowercase()
    }
}

/// The terms a resident is found by: name, id and phone digits.
pub fn resident_terms(resident: &Resident) -> Vec<String> {
    let mut terms = vec![normalize(&resident.name), resident.id.to_lowercase()];
    let digits = normalize(&resident.phone);
    if digits.len() >= 3 && digits.chars().all(|c| c.is_ascii_digit()) {
        terms.push(digits);
    }
    terms.retain(|t| !t.is_empty() && !t.as_bytes().contains(&SEP));
    terms.sort();
    terms.dedup();
    terms
}

/// The term under which a search lists this resident: the smallest one the
/// search is a prefix of. A resident whose name and id both match is listed
/// once, under this term only.
pub fn listed_term(resident: &Resident, search: &str) -> Option<String> {
    resident_terms(resident)
        .into_iter()
        .find(|t| t.starts_with(search))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phone_searches_are_digits_and_names_lower_case() {
        assert_eq!(normalize(" +86 138-0000 "), "861380000");
        assert_eq!(normalize("Wang Li"), "wang li");
        assert_eq!(normalize("王"), "王");
        assert_eq!(normalize("r-0001"), "r-0001");
    }

    #[test]
    fn a_resident_is_listed_under_its_smallest_matching_term() {
        let resident = Resident {
            id: "r-ab".into(),
            name: "R-Abbot".into(),
            phone: "138 0000 1111".into(),
            ..Default::default()
        };
        assert_eq!(
            resident_terms(&resident),
            vec!["13800001111", "r-ab", "r-abbot"]
        );
        assert_eq!(listed_term(&resident, "r-a").as_deref(), Some("r-ab"));
        assert_eq!(listed_term(&resident, "r-abb").as_deref(), Some("r-abbot"));
        assert_eq!(listed_term(&resident, "zz"), None);
    }

    #[test]
    fn a_filter_outside_the_scope_walks_nothing() {
        let q = ListQuery {
            community: "c-2".into(),
            scope: Some(vec!["c-1".into()]),
            ..Default::default()
        };
        assert_eq!(q.communities(), Some(vec![]));
        let q = ListQuery {
            scope: Some(vec!["c-9".into(), "c-1".into()]),
            ..Default::default()
        };
        assert_eq!(q.communities(), Some(vec!["c-1".into(), "c-9".into()]));
        assert_eq!(ListQuery::default().communities(), None);
    }
}
