//! [`SignalStore`] on PostgreSQL (schema 8: `signal_states`, `vital_days`).

use anxin_proto::v1::VitalDay;

use crate::store::StoreError;
use crate::store::signals::SignalStore;

use super::core::*;

impl SignalStore for PgStore {
    fn signal_states(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        self.block(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "select key, body from signal_states where key = any($1)",
                    &[&keys],
                )
                .await?;
            let mut found: std::collections::HashMap<String, Vec<u8>> =
                rows.into_iter().map(|r| (r.get(0), r.get(1))).collect();
            Ok(keys.iter().map(|k| found.remove(k)).collect())
        })
    }

    fn save_signals(
        &self,
        states: &[(String, Option<Vec<u8>>)],
        days: &[VitalDay],
    ) -> Result<(), StoreError> {
        if states.is_empty() && days.is_empty() {
            return Ok(());
        }
        let (put, gone): (Vec<_>, Vec<_>) = states.iter().partition(|(_, s)| s.is_some());
        let put_keys: Vec<&str> = put.iter().map(|(k, _)| k.as_str()).collect();
        let put_bodies: Vec<&[u8]> = put.iter().filter_map(|(_, s)| s.as_deref()).collect();
        let gone: Vec<&str> = gone.iter().map(|(k, _)| k.as_str()).collect();
        // One row per (resident, sign, day) in the statement: the caller's
        // days are folded first (an upsert may not touch a row twice).
        let mut folded: std::collections::BTreeMap<(&str, &str, i32), VitalDay> =
            Default::default();
        for day in days {
            crate::domain::vitals::merge_days(
                folded
                    .entry((&day.resident_id, &day.sign, day.day))
                    .or_default(),
                day,
            );
        }
        let residents: Vec<&str> = folded.keys().map(|k| k.0).collect();
        let signs: Vec<&str> = folded.keys().map(|k| k.1).collect();
        let day_numbers: Vec<i32> = folded.keys().map(|k| k.2).collect();
        let mins: Vec<f64> = folded.values().map(|d| d.min).collect();
        let maxes: Vec<f64> = folded.values().map(|d| d.max).collect();
        let sums: Vec<f64> = folded.values().map(|d| d.sum).collect();
        let counts: Vec<i64> = folded.values().map(|d| d.count as i64).collect();
        self.write(async |tx| {
            if !put_keys.is_empty() {
                tx.execute(
                    "insert into signal_states (key, body)
                     select * from unnest($1::text[], $2::bytea[])
                     on conflict (key) do update set body = excluded.body",
                    &[&put_keys, &put_bodies],
                )
                .await?;
            }
            if !gone.is_empty() {
                tx.execute("delete from signal_states where key = any($1)", &[&gone])
                    .await?;
            }
            if !residents.is_empty() {
                tx.execute(
                    "insert into vital_days (resident_id, sign, day, min, max, sum, count)
                     select * from unnest($1::text[], $2::text[], $3::int[],
                                          $4::float8[], $5::float8[], $6::float8[], $7::bigint[])
                     on conflict (resident_id, sign, day) do update set
                       min = least(vital_days.min, excluded.min),
                       max = greatest(vital_days.max, excluded.max),
                       sum = vital_days.sum + excluded.sum,
                       count = vital_days.count + excluded.count",
                    &[
                        &residents,
                        &signs,
                        &day_numbers,
                        &mins,
                        &maxes,
                        &sums,
                        &counts,
                    ],
                )
                .await?;
            }
            Ok(())
        })
    }

    fn signal_states_under(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        // `starts_with` rather than LIKE: a key's `_` is not a wildcard.
        self.block(async {
            let client = self.pool.get().await?;
            Ok(client
                .query(
                    "select key, body from signal_states where starts_with(key, $1) order by key",
                    &[&prefix],
                )
                .await?
                .into_iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn vital_days(
        &self,
        resident_id: &str,
        from_day: i32,
        to_day: i32,
    ) -> Result<Vec<VitalDay>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            Ok(client
                .query(
                    "select sign, day, min, max, sum, count from vital_days
                     where resident_id = $1 and day >= $2 and day < $3
                     order by sign, day",
                    &[&resident_id, &from_day, &to_day],
                )
                .await?
                .into_iter()
                .map(|r| VitalDay {
                    resident_id: resident_id.to_string(),
                    sign: r.get(0),
                    day: r.get(1),
                    min: r.get(2),
                    max: r.get(3),
                    sum: r.get(4),
                    count: r.get::<_, i64>(5) as u64,
                })
                .collect())
        })
    }

    fn prune_vital_days(&self, before_day: i32, limit: usize) -> Result<u64, StoreError> {
        self.write(async |tx| {
            Ok(tx
                .execute(
                    "delete from vital_days where ctid in
                       (select ctid from vital_days where day < $1 limit $2)",
                    &[&before_day, &(limit as i64)],
                )
                .await?)
        })
    }
}
