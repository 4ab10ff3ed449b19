//! [`SignalStore`] on sled: rule states in `signal_states` (key → state),
//! daily summaries in `vital_days` (`resident ‖ 0 ‖ sign ‖ 0 ‖ day (u32 BE)`
//! → `VitalDay`) with `vital_days_by_day` (`day (u32 BE) ‖ that key` → ())
//! so retention finds old days without reading every resident's.

use anxin_proto::v1::VitalDay;
use prost::Message;
use sled::Transactional;

use super::trees::*;
use crate::store::signals::SignalStore;
use crate::store::{StoreError, decode};

fn day_prefix(resident_id: &str, sign: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(resident_id.len() + sign.len() + 6);
    key.extend_from_slice(resident_id.as_bytes());
    key.push(0);
    key.extend_from_slice(sign.as_bytes());
    key.push(0);
    key
}

fn vital_key(day: &VitalDay) -> Vec<u8> {
    let mut key = day_prefix(&day.resident_id, &day.sign);
    key.extend_from_slice(&(day.day.max(0) as u32).to_be_bytes());
    key
}

impl SignalStore for SledStore {
    fn signal_states(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        keys.iter()
            .map(|k| Ok(self.signal_states.get(k)?.map(|v| v.to_vec())))
            .collect()
    }

    fn save_signals(
        &self,
        states: &[(String, Option<Vec<u8>>)],
        days: &[VitalDay],
    ) -> Result<(), StoreError> {
        Ok((
            &self.signal_states,
            &self.vital_days,
            &self.vital_days_by_day,
        )
            .transaction(|(tree, vital, by_day)| {
                for (key, state) in states {
                    match state {
                        Some(bytes) => tree.insert(key.as_bytes(), bytes.as_slice())?,
                        None => tree.remove(key.as_bytes())?,
                    };
                }
                for day in days {
                    let key = vital_key(day);
                    let mut stored = match vital.get(&key)? {
                        Some(bytes) => decode::<VitalDay>("vital day", &bytes).map_err(abort)?,
                        None => VitalDay::default(),
                    };
                    crate::domain::vitals::merge_days(&mut stored, day);
                    vital.insert(key.as_slice(), stored.encode_to_vec())?;
                    let mut index = (day.day.max(0) as u32).to_be_bytes().to_vec();
                    index.extend_from_slice(&key);
                    by_day.insert(index, &[])?;
                }
                Ok(())
            })?)
    }

    fn signal_states_under(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.signal_states
            .scan_prefix(prefix)
            .map(|item| {
                let (key, value) = item?;
                Ok((String::from_utf8_lossy(&key).into_owned(), value.to_vec()))
            })
            .collect()
    }

    fn vital_days(
        &self,
        resident_id: &str,
        from_day: i32,
        to_day: i32,
    ) -> Result<Vec<VitalDay>, StoreError> {
        let mut prefix = resident_id.as_bytes().to_vec();
        prefix.push(0);
        let mut days = Vec::new();
        for item in self.vital_days.scan_prefix(prefix) {
            let day: VitalDay = decode("vital day", &item?.1)?;
            if (from_day..to_day).contains(&day.day) {
                days.push(day);
            }
        }
        Ok(days)
    }

    fn prune_vital_days(&self, before_day: i32, limit: usize) -> Result<u64, StoreError> {
        let old: Vec<sled::IVec> = self
            .vital_days_by_day
            .range(..(before_day.max(0) as u32).to_be_bytes())
            .keys()
            .take(limit)
            .collect::<Result<_, _>>()?;
        if old.is_empty() {
            return Ok(0);
        }
        (&self.vital_days, &self.vital_days_by_day).transaction(|(vital, by_day)| {
            for index in &old {
                vital.remove(&index[4..])?;
                by_day.remove(index)?;
            }
            Ok(())
        })?;
        Ok(old.len() as u64)
    }
}
