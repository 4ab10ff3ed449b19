//! The layer guard (ARCHITECTURE.md, "Layers"): no file imports from a
//! layer above its own, and no files import each other, directly or
//! through others — in the server and in the gateway.

use std::path::Path;

use anxin_tests::layers::{Findings, Layer, check};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The server's layers, lowest first (ARCHITECTURE.md).
const SERVER: &[Layer] = &[
    Layer {
        name: "domain",
        rank: 1,
        prefixes: &["domain/", "metrics.rs"],
    },
    Layer {
        name: "store",
        rank: 2,
        prefixes: &["store/"],
    },
    Layer {
        name: "desks",
        rank: 3,
        prefixes: &["desks/"],
    },
    Layer {
        name: "tasks",
        rank: 4,
        prefixes: &["tasks/"],
    },
    Layer {
        name: "api",
        rank: 5,
        prefixes: &["api/"],
    },
    Layer {
        name: "wiring",
        rank: 6,
        prefixes: &["lib.rs", "main.rs", "commands/", "config.rs"],
    },
];

fn report(crate_name: &str, findings: &Findings) -> String {
    let mut out = String::new();
    if std::env::var("LAYERS_PRINT").is_ok() {
        for i in &findings.imports {
            out += &format!("  {} -> {} ({})\n", i.from, i.to, i.path);
        }
    }
    for line in &findings.unplaced {
        out += &format!(
            "{crate_name}: {line} is in no layer (add it to the table in tests/tests/layers.rs and to ARCHITECTURE.md)\n"
        );
    }
    for line in &findings.upward {
        out += &format!("{crate_name}: {line}\n");
    }
    for line in &findings.cycles {
        out += &format!("{crate_name}: {line}\n");
    }
    out
}

#[test]
fn server_layers_point_down() {
    let findings = check(&workspace().join("server"), "anxin_server", SERVER);
    let text = report("anxin-server", &findings);
    assert!(
        text.is_empty()
            || (std::env::var("LAYERS_PRINT").is_ok()
                && findings.upward.is_empty()
                && findings.cycles.is_empty()
                && findings.unplaced.is_empty()),
        "\n{text}"
    );
}
