//! The layer guard (ARCHITECTURE.md, "Layers"): no file imports from a
//! layer above its own, and no files import each other, directly or
//! through others — in the server and in the gateway.

use std::path::Path;

use anxin_tests::layers::{Findings, Layer, check};

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

const fn layer(name: &'static str, rank: u32, prefixes: &'static [&'static str]) -> Layer {
    Layer {
        name,
        rank,
        prefixes,
    }
}

/// The server's layers, lowest first (ARCHITECTURE.md, "Layers"): each
/// file may import only from its own layer and those below it.
const SERVER: &[Layer] = &[
    layer("domain", 1, &["domain/", "metrics.rs"]),
    layer("store", 2, &["store/"]),
    layer("config", 3, &["config.rs"]),
    layer("desks", 4, &["desks/"]),
    layer("tasks", 5, &["tasks/"]),
    layer("api", 6, &["api/"]),
    layer("wiring", 7, &["lib.rs", "main.rs", "commands/"]),
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
        findings.upward.is_empty() && findings.cycles.is_empty() && findings.unplaced.is_empty(),
        "\n{text}"
    );
    if std::env::var("LAYERS_PRINT").is_ok() {
        eprintln!("{text}");
    }
}

/// The gateway is one layer today: the guard keeps its files free of
/// import loops.
const GATEWAY: &[Layer] = &[layer("gateway", 1, &[""])];

#[test]
fn gateway_files_import_no_loops() {
    let findings = check(&workspace().join("gateway"), "anxin_gateway", GATEWAY);
    let text = report("anxin-gateway", &findings);
    assert!(
        findings.upward.is_empty() && findings.cycles.is_empty() && findings.unplaced.is_empty(),
        "\n{text}"
    );
}

/// The guard itself: a planted upward import and a loop between two files
/// are found and named (a guard that cannot fail would prove nothing).
#[test]
fn the_guard_names_an_upward_import_and_a_loop() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("low")).unwrap();
    std::fs::create_dir_all(src.join("high")).unwrap();
    let write = |path: &str, text: &str| std::fs::write(src.join(path), text).unwrap();
    write("lib.rs", "pub mod high;\npub mod low;\n");
    write("low/mod.rs", "pub mod a;\npub mod b;\n");
    // An upward import, in code rather than a `use`.
    write(
        "low/a.rs",
        "pub fn a() { crate::high::h(); super::b::b(); }\n",
    );
    // A loop through a re-export-free `use`.
    write("low/b.rs", "use super::a::a;\npub fn b() { a(); }\n");
    write("high/mod.rs", "pub fn h() {}\n");
    const LAYERS: &[Layer] = &[
        layer("low", 1, &["low/", "lib.rs"]),
        layer("high", 2, &["high/"]),
    ];
    let findings = check(dir.path(), "planted", LAYERS);
    assert_eq!(findings.upward.len(), 1, "{findings:?}");
    assert!(
        findings.upward[0].contains("src/low/a.rs")
            && findings.upward[0].contains("crate::high::h")
            && findings.upward[0].contains("src/high/mod.rs"),
        "{}",
        findings.upward[0]
    );
    assert_eq!(findings.cycles.len(), 1, "{findings:?}");
    assert!(
        findings.cycles[0].contains("src/low/a.rs") && findings.cycles[0].contains("src/low/b.rs"),
        "{}",
        findings.cycles[0]
    );
}
