//! Compiles the .proto contracts with protox (pure Rust), so a fresh clone
//! builds without `protoc` on the machine.

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &[
    "anxin/v1/device.proto",
    "anxin/v1/uplink.proto",
    "anxin/v1/dispatch.proto",
    "anxin/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["."])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTOS)?;
    let descriptor_bytes = compiler.encode_file_descriptor_set();
    fs::write(out_dir.join("anxin_descriptor.bin"), &descriptor_bytes)?;

    tonic_prost_build::configure().compile_fds(compiler.file_descriptor_set())?;

    // proto3 JSON (serde) for the `…/event/json` topic and the REST API.
    // Default values are written out (`"priority": "PRIORITY_P0"`, not an
    // absent field): REST and MQTT JSON readers should not need to know
    // proto3's defaults.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor_bytes)?
        .emit_fields()
        .build(&[".anxin"])?;
    Ok(())
}
