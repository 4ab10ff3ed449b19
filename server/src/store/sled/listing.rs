//! The directory's index trees and its paged lists ([`crate::domain::listing`]).
//!
//! Index trees hold keys only (`part ‖ 0x00 ‖ id` → empty) and are written
//! in the same transaction as the record they index, old keys removed:
//! - `residents_by_community`: `community_id ‖ 0 ‖ resident id`
//! - `resident_terms`: `term ‖ 0 ‖ resident id` (name, id, phone digits)
//! - `devices_by_gateway`, `devices_by_resident`: `gateway_id|resident_id ‖ 0 ‖ device id`
//! - `staff_by_community`: `community_id ‖ 0 ‖ staff id`
//! - `residents_enrolled`: `resident id`, for residents with a check-in
//!   window
//!
//! A store written before these trees existed has them built on open.

use std::ops::Bound;

use anxin_proto::v1::{DeviceRecord, GatewayRecord, Place, Resident, Staff};
use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use super::{Trees, get};
use crate::store::{StoreError, decode};

use crate::domain::listing::{self, ListQuery, Page, SCAN_BUDGET, key};

/// Bumped when an index's key layout changes: the trees are rebuilt.
const INDEX_VERSION: &[u8] = b"1";
const INDEX_VERSION_KEY: &str = "directory_index_version";

type TxResult = Result<(), ConflictableTransactionError<StoreError>>;

pub(super) fn resident_keys(r: &Resident) -> (Vec<u8>, Vec<Vec<u8>>) {
    let community = key(&[&r.community_id, &r.id]);
    let terms = listing::resident_terms(r)
        .iter()
        .map(|t| key(&[t, &r.id]))
        .collect();
    (community, terms)
}

pub(super) fn device_keys(d: &DeviceRecord) -> [Vec<u8>; 2] {
    [key(&[&d.gateway_id, &d.id]), key(&[&d.resident_id, &d.id])]
}

pub(super) fn staff_keys(s: &Staff) -> Vec<Vec<u8>> {
    s.communities.iter().map(|c| key(&[c, &s.id])).collect()
}

pub(super) struct IndexTx<'a> {
    pub residents_by_community: &'a TransactionalTree,
    pub resident_terms: &'a TransactionalTree,
    pub devices_by_gateway: &'a TransactionalTree,
    pub devices_by_resident: &'a TransactionalTree,
    pub staff_by_community: &'a TransactionalTree,
    pub residents_enrolled: &'a TransactionalTree,
}

impl IndexTx<'_> {
    pub fn resident(&self, old: Option<&Resident>, new: &Resident) -> TxResult {
        if let Some(old) = old {
            let (community, terms) = resident_keys(old);
            self.residents_by_community.remove(community)?;
            for term in terms {
                self.resident_terms.remove(term)?;
            }
        }
        let (community, terms) = resident_keys(new);
        self.residents_by_community.insert(community, &[])?;
        for term in terms {
            self.resident_terms.insert(term, &[])?;
        }
        match new.checkin {
            Some(_) => self.residents_enrolled.insert(new.id.as_bytes(), &[])?,
            None => self.residents_enrolled.remove(new.id.as_bytes())?,
        };
        Ok(())
    }

    pub fn device(&self, old: Option<&DeviceRecord>, new: &DeviceRecord) -> TxResult {
        if let Some(old) = old {
            let [gateway, resident] = device_keys(old);
            self.devices_by_gateway.remove(gateway)?;
            self.devices_by_resident.remove(resident)?;
        }
        let [gateway, resident] = device_keys(new);
        self.devices_by_gateway.insert(gateway, &[])?;
        self.devices_by_resident.insert(resident, &[])?;
        Ok(())
    }

    pub fn staff(&self, old: Option<&Staff>, new: &Staff) -> TxResult {
        for k in old.map(staff_keys).unwrap_or_default() {
            self.staff_by_community.remove(k)?;
        }
        for k in staff_keys(new) {
            self.staff_by_community.insert(k, &[])?;
        }
        Ok(())
    }
}

/// Builds the index trees from the records if this store's were made by
/// an older layout (or never made).
pub(super) fn ensure_indexes(trees: &Trees, meta: &sled::Tree) -> Result<(), StoreError> {
    if meta.get(INDEX_VERSION_KEY)?.as_deref() == Some(INDEX_VERSION) {
        return Ok(());
    }
    for tree in [
        &trees.residents_by_community,
        &trees.resident_terms,
        &trees.devices_by_gateway,
        &trees.devices_by_resident,
        &trees.staff_by_community,
        &trees.residents_enrolled,
    ] {
        tree.clear()?;
    }
    let mut count = 0usize;
    for bytes in trees.residents.iter().values() {
        let r: Resident = decode("resident", &bytes?)?;
        let (community, terms) = resident_keys(&r);
        trees.residents_by_community.insert(community, &[])?;
        for term in terms {
            trees.resident_terms.insert(term, &[])?;
        }
        if r.checkin.is_some() {
            trees.residents_enrolled.insert(r.id.as_bytes(), &[])?;
        }
        count += 1;
    }
    for bytes in trees.devices.iter().values() {
        let d: DeviceRecord = decode("device", &bytes?)?;
        let [gateway, resident] = device_keys(&d);
        trees.devices_by_gateway.insert(gateway, &[])?;
        trees.devices_by_resident.insert(resident, &[])?;
        count += 1;
    }
    for bytes in trees.staff.iter().values() {
        let s: Staff = decode("staff", &bytes?)?;
        for k in staff_keys(&s) {
            trees.staff_by_community.insert(k, &[])?;
        }
        count += 1;
    }
    meta.insert(INDEX_VERSION_KEY, INDEX_VERSION)?;
    if count > 0 {
        tracing::info!(records = count, "directory indexes built");
    }
    Ok(())
}

/// The id at the end of an index key.
fn id_of(key: &[u8]) -> &[u8] {
    match key.iter().rposition(|b| *b == listing::SEP) {
        Some(at) => &key[at + 1..],
        None => key,
    }
}

fn prefix(part: &str) -> Vec<u8> {
    let mut p = part.as_bytes().to_vec();
    p.push(listing::SEP);
    p
}

/// One page of `tree`: walks the key ranges `prefixes` (in key order) from
/// just after the cursor, turning each entry into a row with `row`
/// (`None`: skipped). See [`crate::domain::listing`] for the contract.
fn walk<T>(
    tree: &sled::Tree,
    prefixes: &[Vec<u8>],
    query: &ListQuery,
    mut row: impl FnMut(&[u8], &[u8]) -> Result<Option<T>, StoreError>,
) -> Result<Page<T>, StoreError> {
    let after = query
        .after_key()
        .map_err(|e| StoreError::Refused(e.to_string()))?;
    let limit = query.limit();
    let mut items = Vec::new();
    let mut looked = 0usize;
    for prefix in prefixes {
        let start = if !after.is_empty() && after.as_slice() >= prefix.as_slice() {
            Bound::Excluded(after.clone())
        } else {
            Bound::Included(prefix.clone())
        };
        for entry in tree.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (k, v) = entry?;
            if !k.starts_with(prefix) {
                break;
            }
            if items.len() == limit {
                // Something follows (here or in a later range): the page
                // ends with its last row.
                return Ok(finish(items, Some(&after)));
            }
            looked += 1;
            if let Some(t) = row(&k, &v)? {
                items.push((k.to_vec(), t));
            }
            if looked >= SCAN_BUDGET && items.len() < limit {
                let mut page = finish(items, None);
                page.next = Some(listing::cursor(&k));
                return Ok(page);
            }
        }
    }
    Ok(finish(items, None))
}

/// A page of `items`; with `more` (the cursor it started from), `next`
/// points after its last row.
fn finish<T>(items: Vec<(Vec<u8>, T)>, more: Option<&[u8]>) -> Page<T> {
    let next =
        more.map(|after| listing::cursor(items.last().map(|(k, _)| k.as_slice()).unwrap_or(after)));
    Page {
        items: items.into_iter().map(|(_, t)| t).collect(),
        next,
    }
}

fn community_prefixes(query: &ListQuery) -> Vec<Vec<u8>> {
    match query.communities() {
        None => vec![Vec::new()],
        Some(list) => list.iter().map(|c| prefix(c)).collect(),
    }
}

pub(super) fn residents(trees: &Trees, query: &ListQuery) -> Result<Page<Resident>, StoreError> {
    let search = query.search_term();
    if search.is_empty() {
        return walk(
            &trees.residents_by_community,
            &community_prefixes(query),
            query,
            |k, _| get(&trees.residents, "resident", id_of(k)),
        );
    }
    walk(
        &trees.resident_terms,
        &[search.as_bytes().to_vec()],
        query,
        |k, _| {
            let Some(r) = get::<Resident>(&trees.residents, "resident", id_of(k))? else {
                return Ok(None);
            };
            let term = &k[..k.len() - id_of(k).len() - 1];
            let listed = listing::listed_term(&r, &search);
            let wanted = query.wants_community(&r.community_id)
                && listed.as_deref().map(str::as_bytes) == Some(term);
            Ok(wanted.then_some(r))
        },
    )
}

pub(super) fn devices(trees: &Trees, query: &ListQuery) -> Result<Page<DeviceRecord>, StoreError> {
    let by = |index: &sled::Tree, part: &str| {
        walk(index, &[prefix(part)], query, |k, _| {
            get(&trees.devices, "device", id_of(k))
        })
    };
    if !query.gateway.is_empty() {
        return by(&trees.devices_by_gateway, &query.gateway);
    }
    if !query.resident.is_empty() {
        return by(&trees.devices_by_resident, &query.resident);
    }
    walk(&trees.devices, &[Vec::new()], query, |_, v| {
        decode("device", v).map(Some)
    })
}

pub(super) fn staff(trees: &Trees, query: &ListQuery) -> Result<Page<Staff>, StoreError> {
    let wanted = |s: &Staff| query.wants_staff(s);
    if !query.community.is_empty() {
        let prefixes = community_prefixes(query);
        return walk(&trees.staff_by_community, &prefixes, query, |k, _| {
            Ok(get::<Staff>(&trees.staff, "staff", id_of(k))?.filter(wanted))
        });
    }
    walk(&trees.staff, &[Vec::new()], query, |_, v| {
        Ok(Some(decode::<Staff>("staff", v)?).filter(wanted))
    })
}

pub(super) fn gateways(
    trees: &Trees,
    query: &ListQuery,
) -> Result<Page<GatewayRecord>, StoreError> {
    walk(&trees.gateways, &[Vec::new()], query, |_, v| {
        Ok(Some(decode::<GatewayRecord>("gateway", v)?).filter(|g| query.wants_gateway(g)))
    })
}

pub(super) fn places(trees: &Trees, query: &ListQuery) -> Result<Page<Place>, StoreError> {
    walk(&trees.places, &[Vec::new()], query, |_, v| {
        Ok(Some(decode::<Place>("place", v)?).filter(|p| query.wants_place(p)))
    })
}

/// Residents with a check-in window, through their index.
pub(super) fn enrolled(trees: &Trees) -> Result<Vec<Resident>, StoreError> {
    let mut out = Vec::new();
    for key in trees.residents_enrolled.iter().keys() {
        if let Some(r) = get(&trees.residents, "resident", &key?)? {
            out.push(r);
        }
    }
    Ok(out)
}
