//! What the welfare judges and the API keep of the directory between
//! directory changes, and community names read once per list.

use anxin_proto::v1::VisitPlan;

use crate::{
    domain::welfare::Window,
    store::{Store, StoreError},
};

/// What the welfare judges and API keep of the directory: the residents
/// enrolled for a check-in and the visit plans, read again only when the
/// directory epoch moved (a write here, another replica's NOTIFY) or after
/// [`WelfareView::MAX_AGE`], so neither a judge's tick nor a console's
/// refresh scans a city's directory.
/// Residents enrolled for the daily check-in, with their windows.
pub type Enrolled = Vec<(anxin_proto::v1::Resident, Window)>;

#[derive(Default)]
pub struct WelfareView {
    enrolled: std::sync::Mutex<Option<Cached<Enrolled>>>,
    plans: std::sync::Mutex<Option<Cached<Vec<VisitPlan>>>>,
}

struct Cached<T> {
    epoch: u64,
    at: std::time::Instant,
    value: std::sync::Arc<T>,
}

impl WelfareView {
    pub const MAX_AGE: std::time::Duration = std::time::Duration::from_secs(600);

    fn get<T>(
        slot: &std::sync::Mutex<Option<Cached<T>>>,
        epoch: u64,
        load: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<std::sync::Arc<T>, StoreError> {
        let mut slot = slot.lock().expect("welfare view lock");
        if let Some(cached) = slot.as_ref()
            && cached.epoch == epoch
            && cached.at.elapsed() < Self::MAX_AGE
        {
            return Ok(cached.value.clone());
        }
        let value = std::sync::Arc::new(load()?);
        *slot = Some(Cached {
            epoch,
            at: std::time::Instant::now(),
            value: value.clone(),
        });
        Ok(value)
    }

    /// Residents with a valid check-in window.
    /// `epoch`: the directory epoch now (`ConnectedGateways::directory_epoch`).
    pub fn enrolled(
        &self,
        store: &Store,
        epoch: u64,
    ) -> Result<std::sync::Arc<Enrolled>, StoreError> {
        Self::get(&self.enrolled, epoch, || {
            Ok(crate::domain::welfare::enrolled(
                &store.enrolled_residents()?,
            ))
        })
    }

    pub fn plans(
        &self,
        store: &Store,
        epoch: u64,
    ) -> Result<std::sync::Arc<Vec<VisitPlan>>, StoreError> {
        Self::get(&self.plans, epoch, || store.visit_plans())
    }
}

/// Community names for lists, each read once per list.
#[derive(Default)]
pub struct PlaceNames(std::collections::HashMap<String, String>);

impl PlaceNames {
    /// Reads the names of `ids` not known yet in one go (a page of rows
    /// names up to hundreds of communities; one read each would cost a
    /// database round trip each).
    pub fn prefetch<'a>(
        &mut self,
        store: &crate::store::Store,
        ids: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), StoreError> {
        let mut wanted: Vec<String> = ids
            .into_iter()
            .filter(|id| !self.0.contains_key(*id))
            .cloned()
            .collect();
        wanted.sort();
        wanted.dedup();
        if wanted.is_empty() {
            return Ok(());
        }
        for place in store.places_by_id(&wanted)? {
            self.0.insert(place.id, place.name);
        }
        for id in wanted {
            self.0.entry(id).or_default();
        }
        Ok(())
    }

    pub fn of(&mut self, store: &crate::store::Store, id: &str) -> Result<String, StoreError> {
        if let Some(name) = self.0.get(id) {
            return Ok(name.clone());
        }
        let name = crate::store::directory::place_name(store, id)?;
        self.0.insert(id.to_string(), name.clone());
        Ok(name)
    }
}
