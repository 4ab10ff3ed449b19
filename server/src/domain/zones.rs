//! Safe zones for a resident who may wander (认知障碍老人防走失): where a
//! fix stands against the zones that apply now, with the fix's accuracy
//! taken into account (a 300 m fix never proves a resident left a 100 m
//! zone), and when a run of fixes outside raises one P0 "left safe zone".
//!
//! Pure: the watch is a value the caller stores between fixes.

use anxin_proto::v1::{LatLon, Location, SafeZone};
use serde::{Deserialize, Serialize};

use crate::domain::calendar::{in_span, span};

const EARTH_M: f64 = 6_371_000.0;

/// A point in metres east and north of a reference: zones are a few
/// kilometres across, so a flat projection is within a metre or two.
#[derive(Debug, Clone, Copy)]
struct Xy(f64, f64);

fn project(lat_e7: i32, lon_e7: i32, origin: (i32, i32)) -> Xy {
    let deg = |e7: i32| f64::from(e7) / 1e7;
    let lat0 = deg(origin.0).to_radians();
    Xy(
        (deg(lon_e7) - deg(origin.1)).to_radians() * lat0.cos() * EARTH_M,
        (deg(lat_e7) - deg(origin.0)).to_radians() * EARTH_M,
    )
}

fn distance_to_segment(p: Xy, a: Xy, b: Xy) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let len2 = dx * dx + dy * dy;
    let t = if len2 == 0.0 {
        0.0
    } else {
        (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / len2).clamp(0.0, 1.0)
    };
    let (cx, cy) = (a.0 + t * dx, a.1 + t * dy);
    ((p.0 - cx).powi(2) + (p.1 - cy).powi(2)).sqrt()
}

/// Signed distance from a zone's edge: negative inside, positive outside.
fn edge_distance(zone: &SafeZone, lat_e7: i32, lon_e7: i32) -> f64 {
    let origin = (lat_e7, lon_e7);
    if zone.polygon.len() >= 3 {
        let points: Vec<Xy> = zone
            .polygon
            .iter()
            .map(|p| project(p.lat_e7, p.lon_e7, origin))
            .collect();
        let p = Xy(0.0, 0.0);
        let mut inside = false;
        let mut nearest = f64::INFINITY;
        for i in 0..points.len() {
            let (a, b) = (points[i], points[(i + 1) % points.len()]);
            if (a.1 > p.1) != (b.1 > p.1) && p.0 < (b.0 - a.0) * (p.1 - a.1) / (b.1 - a.1) + a.0 {
                inside = !inside;
            }
            nearest = nearest.min(distance_to_segment(p, a, b));
        }
        if inside { -nearest } else { nearest }
    } else {
        let center = zone.center.unwrap_or_default();
        let c = project(center.lat_e7, center.lon_e7, origin);
        (c.0 * c.0 + c.1 * c.1).sqrt() - f64::from(zone.radius_m)
    }
}

/// Whether a zone applies at `now_ms` (its hours, local time).
pub fn applies(zone: &SafeZone, now_ms: i64, utc_offset_minutes: i32) -> bool {
    zone.hours.is_empty()
        || span(&zone.hours).is_some_and(|s| in_span(s, now_ms, utc_offset_minutes))
}

/// Where a fix stands against the zones that apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Where {
    /// No zone applies now.
    Unwatched,
    Inside,
    /// Outside every zone by more than the fix's accuracy.
    Outside,
    /// Outside, but within the fix's accuracy of a zone's edge: proves
    /// nothing either way.
    Unsure,
}

pub fn where_is(fix: &Location, zones: &[&SafeZone]) -> Where {
    if zones.is_empty() {
        return Where::Unwatched;
    }
    let nearest = zones
        .iter()
        .map(|z| edge_distance(z, fix.lat_e7, fix.lon_e7))
        .fold(f64::INFINITY, f64::min);
    if nearest <= 0.0 {
        Where::Inside
    } else if nearest > f64::from(fix.accuracy_m) {
        Where::Outside
    } else {
        Where::Unsure
    }
}

/// Zones as written: a name, a circle with a radius or a polygon of at
/// least three points, coordinates on the globe, hours as "HH:MM-HH:MM".
pub fn check_zones(zones: &[SafeZone]) -> Result<(), String> {
    let on_globe = |p: &LatLon| p.lat_e7.abs() <= 900_000_000 && p.lon_e7.abs() <= 1_800_000_000;
    for zone in zones {
        let name = &zone.name;
        if name.trim().is_empty() {
            return Err("safe zone name is empty".into());
        }
        if !zone.polygon.is_empty() {
            if zone.polygon.len() < 3 {
                return Err(format!(
                    "safe zone `{name}`: a polygon needs at least 3 points"
                ));
            }
            if !zone.polygon.iter().all(on_globe) {
                return Err(format!("safe zone `{name}`: a point is off the globe"));
            }
        } else {
            match &zone.center {
                Some(c) if on_globe(c) && zone.radius_m >= 20 && zone.radius_m <= 50_000 => {}
                Some(_) => {
                    return Err(format!(
                        "safe zone `{name}`: a circle needs a center on the globe and radius_m between 20 and 50000"
                    ));
                }
                None => {
                    return Err(format!(
                        "safe zone `{name}`: give a center and radius_m, or a polygon"
                    ));
                }
            }
        }
        if !zone.hours.is_empty() && span(&zone.hours).is_none() {
            return Err(format!(
                "safe zone `{name}`: hours `{}` is not HH:MM-HH:MM",
                zone.hours
            ));
        }
    }
    Ok(())
}

/// A resident's fixes against their zones, stored between fixes
/// (`zone/{resident}`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ZoneWatch {
    /// The first fix outside of this run: the episode's identity.
    pub first_out_ms: i64,
    /// Consecutive fixes outside (an unsure fix neither counts nor breaks
    /// the run).
    pub out: u32,
    pub raised: bool,
    /// The run's fixes (time, lat, lon, accuracy): the alert's track.
    pub fixes: Vec<(i64, i32, i32, u32)>,
}

const FIXES_KEPT: usize = 20;

#[derive(Debug, Clone, PartialEq)]
pub enum ZoneStep {
    Nothing,
    /// Raise "left safe zone" (seq = `first_out_ms << 2`).
    Raise {
        seq: u64,
        note: String,
    },
    /// Back inside after a raise.
    Returned {
        note: String,
    },
}

/// Judges one fix; `watch` is the stored state, updated in place.
pub fn judge(
    watch: &mut Option<ZoneWatch>,
    fix: &Location,
    at_ms: i64,
    zones: &[&SafeZone],
    fixes_needed: u32,
) -> ZoneStep {
    match where_is(fix, zones) {
        Where::Unsure => ZoneStep::Nothing,
        Where::Unwatched => {
            *watch = None;
            ZoneStep::Nothing
        }
        Where::Inside => match watch.take() {
            Some(w) if w.raised => ZoneStep::Returned {
                note: format!(
                    "Back inside a safe zone ({}) after {} min.",
                    names(zones),
                    (at_ms - w.first_out_ms).max(0) / 60_000
                ),
            },
            _ => ZoneStep::Nothing,
        },
        Where::Outside => {
            let w = watch.get_or_insert_with(|| ZoneWatch {
                first_out_ms: at_ms,
                ..Default::default()
            });
            w.out += 1;
            w.fixes
                .push((at_ms, fix.lat_e7, fix.lon_e7, fix.accuracy_m));
            let excess = w.fixes.len().saturating_sub(FIXES_KEPT);
            w.fixes.drain(..excess);
            if w.raised || w.out < fixes_needed.max(1) {
                return ZoneStep::Nothing;
            }
            w.raised = true;
            let nearest = zones
                .iter()
                .map(|z| edge_distance(z, fix.lat_e7, fix.lon_e7))
                .fold(f64::INFINITY, f64::min);
            ZoneStep::Raise {
                seq: (w.first_out_ms.max(0) as u64) << 2,
                note: format!(
                    "Left the safe zone ({}): {} fixes outside, the latest {:.0} m beyond its edge (±{} m).",
                    names(zones),
                    w.out,
                    nearest,
                    fix.accuracy_m
                ),
            }
        }
    }
}

fn names(zones: &[&SafeZone]) -> String {
    zones
        .iter()
        .map(|z| z.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    // A community in Shanghai's Jing'an district.
    const HOME: (i32, i32) = (312_290_000, 1_214_550_000);

    fn circle(radius_m: u32, hours: &str) -> SafeZone {
        SafeZone {
            name: "home".into(),
            center: Some(LatLon {
                lat_e7: HOME.0,
                lon_e7: HOME.1,
            }),
            radius_m,
            hours: hours.into(),
            ..Default::default()
        }
    }

    /// A fix `north_m` metres north of home.
    fn fix(north_m: f64, accuracy_m: u32) -> Location {
        Location {
            lat_e7: HOME.0 + (north_m / EARTH_M).to_degrees().mul_add(1e7, 0.0) as i32,
            lon_e7: HOME.1,
            accuracy_m,
            room: String::new(),
        }
    }

    #[test]
    fn accuracy_decides_what_a_fix_proves() {
        let zone = circle(100, "");
        let zones = [&zone];
        assert_eq!(where_is(&fix(50.0, 10), &zones), Where::Inside);
        assert_eq!(where_is(&fix(150.0, 10), &zones), Where::Outside);
        // 150 m out, but ±300 m: could be at home.
        assert_eq!(where_is(&fix(150.0, 300), &zones), Where::Unsure);
        assert_eq!(where_is(&fix(150.0, 10), &[]), Where::Unwatched);
    }

    #[test]
    fn three_fixes_out_raise_once_and_noise_raises_nothing() {
        let zone = circle(100, "");
        let zones = [&zone];
        let mut watch = None;
        let mut steps = Vec::new();
        for (i, (north, acc)) in [
            (150.0, 300),
            (160.0, 300),
            (170.0, 300),
            (180.0, 300),
            (200.0, 15),
            (180.0, 300),
            (300.0, 15),
            (400.0, 15),
            (500.0, 15),
            (40.0, 10),
        ]
        .into_iter()
        .enumerate()
        {
            steps.push(judge(
                &mut watch,
                &fix(north, acc),
                i as i64 * 30_000,
                &zones,
                3,
            ));
        }
        let raises: Vec<usize> = (0..steps.len())
            .filter(|i| matches!(steps[*i], ZoneStep::Raise { .. }))
            .collect();
        // Sure fixes out at 4, 6 and 7 (5 is unsure): the third raises.
        assert_eq!(raises, vec![7], "{steps:?}");
        assert!(matches!(steps[9], ZoneStep::Returned { .. }), "{steps:?}");
        match &steps[7] {
            ZoneStep::Raise { seq, note } => {
                assert_eq!(
                    *seq,
                    (4 * 30_000) << 2,
                    "the run started at the first sure fix out"
                );
                assert!(note.contains("home"), "{note}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(watch, None);
    }

    #[test]
    fn polygons_and_hours() {
        let square = SafeZone {
            name: "garden".into(),
            polygon: [(0.0, 0.0), (0.0, 200.0), (200.0, 200.0), (200.0, 0.0)]
                .iter()
                .map(|(n, e): &(f64, f64)| LatLon {
                    lat_e7: HOME.0 + ((n / EARTH_M).to_degrees() * 1e7) as i32,
                    lon_e7: HOME.1
                        + ((e / (EARTH_M * (31.229f64).to_radians().cos())).to_degrees() * 1e7)
                            as i32,
                })
                .collect(),
            hours: "20:00-07:00".into(),
            ..Default::default()
        };
        // Inside the square, then 100 m north of it.
        let inside = Location {
            lat_e7: HOME.0 + ((100.0 / EARTH_M).to_degrees() * 1e7) as i32,
            lon_e7: HOME.1 + 9_000,
            ..Default::default()
        };
        assert_eq!(where_is(&inside, &[&square]), Where::Inside);
        let out = Location {
            lat_e7: HOME.0 + ((300.0 / EARTH_M).to_degrees() * 1e7) as i32,
            accuracy_m: 20,
            ..inside.clone()
        };
        assert_eq!(where_is(&out, &[&square]), Where::Outside);
        // 22:00 and 12:00 in UTC+8.
        let day = 20_000 * crate::domain::calendar::DAY_MS - 480 * 60_000;
        assert!(applies(&square, day + 22 * 3_600_000, 480));
        assert!(!applies(&square, day + 12 * 3_600_000, 480));
        assert!(check_zones(&[square]).is_ok());
        assert!(
            check_zones(&[circle(5, "")])
                .unwrap_err()
                .contains("radius_m")
        );
        assert!(
            check_zones(&[circle(100, "late")])
                .unwrap_err()
                .contains("hours")
        );
    }
}
