//! Seeding the directory from a TOML file, offline (`anxin-server --seed
//! FILE`): the first city, communities, residents, devices, gateways with
//! their uplink tokens and staff with their API tokens, before the server
//! first starts. Every record goes through the same checks as the admin
//! API; the first bad one stops the seed and is named.
//!
//! Records use the proto3 JSON field names and enum names of the admin API
//! (`communityId`, `level = "PLACE_LEVEL_COMMUNITY"`); see
//! `deploy/config/seed.example.toml`.

use anxin_proto::v1::{DeviceRecord, GatewayRecord, Place, Resident, Staff, VisitPlan};
use serde::Deserialize;

use anxin_server::{desks::admin::AdminDesk, domain::rights::Principal};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SeedFile {
    pub places: Vec<Place>,
    pub residents: Vec<Resident>,
    pub devices: Vec<DeviceRecord>,
    pub gateways: Vec<SeedGateway>,
    pub staff: Vec<Staff>,
    pub tokens: Vec<SeedToken>,
    #[serde(rename = "visitPlans")]
    pub visit_plans: Vec<VisitPlan>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeedGateway {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub community_id: String,
    /// The gateway's uplink token (its config's `uplink.token`).
    pub token: String,
}

/// An API token for a staff member.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedToken {
    pub staff: String,
    pub token: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: {problem}")]
pub struct SeedError {
    pub what: String,
    pub problem: String,
}

/// Applies a seed file; returns how many records were written.
pub fn apply(admin: &AdminDesk, text: &str) -> Result<usize, SeedError> {
    let seed: SeedFile = toml::from_str(text).map_err(|e| SeedError {
        what: "seed file".into(),
        problem: e.to_string(),
    })?;
    let fail = |what: String| {
        move |e: anxin_server::desks::alerts::DeskError| SeedError {
            what,
            problem: e.to_string(),
        }
    };
    let admin_caller = Principal::Admin;
    let mut written = 0;
    for place in seed.places {
        let what = format!("place `{}`", place.id);
        admin.put_place(&admin_caller, place).map_err(fail(what))?;
        written += 1;
    }
    for gateway in seed.gateways {
        let what = format!("gateway `{}`", gateway.id);
        let record = GatewayRecord {
            id: gateway.id,
            name: gateway.name,
            community_id: gateway.community_id,
        };
        admin
            .put_gateway(&admin_caller, record, &gateway.token)
            .map_err(fail(what))?;
        written += 1;
    }
    for resident in seed.residents {
        let what = format!("resident `{}`", resident.id);
        admin
            .put_resident(&admin_caller, resident)
            .map_err(fail(what))?;
        written += 1;
    }
    for device in seed.devices {
        let what = format!("device `{}`", device.id);
        admin
            .put_device(&admin_caller, device)
            .map_err(fail(what))?;
        written += 1;
    }
    for staff in seed.staff {
        let what = format!("staff `{}`", staff.id);
        admin.put_staff(&admin_caller, staff).map_err(fail(what))?;
        written += 1;
    }
    for plan in seed.visit_plans {
        let what = format!("visit plan `{}`", plan.id);
        let problem = |problem: String| SeedError {
            what: what.clone(),
            problem,
        };
        let plan = anxin_server::desks::welfare::plans::prepare_plan(
            admin.store(),
            plan,
            anxin_proto::now_ms(),
        )
        .map_err(problem)?;
        anxin_server::desks::welfare::plans::save_plan(admin.store(), "admin", &plan)
            .map_err(|e| problem(e.to_string()))?;
        written += 1;
    }
    for token in seed.tokens {
        let what = format!("token of `{}`", token.staff);
        admin
            .tokens()
            .set_staff_token(&admin_caller, &token.staff, &token.token)
            .map_err(fail(what))?;
        written += 1;
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_seeds_and_bad_records_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = anxin_server::store::open_sled(dir.path()).unwrap();
        let admin = AdminDesk::new(store, 60_000, Default::default());
        let example = include_str!("../../../deploy/config/seed.example.toml");
        assert!(apply(&admin, example).unwrap() > 10);
        let err = apply(
            &admin,
            "[[residents]]\nid = \"r-x\"\nname = \"X\"\ncommunityId = \"nowhere\"\naddress = \"1\"\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("resident `r-x`"), "{err}");
        assert!(err.to_string().contains("nowhere"), "{err}");
    }
}
