//! The layer guard: reads a crate's sources with `syn`, resolves every
//! `crate::`/`super::`/`self::` path (and a binary's paths into its own
//! library) to the file that defines the name, and reports imports that
//! run from a lower layer to a higher one and files that import each other,
//! directly or through others. Run by `tests/tests/layers.rs` on the server
//! and the gateway; ARCHITECTURE.md names the layers.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
};

use syn::visit::Visit;

/// A layer: the files named by any of `prefixes` (relative to `src/`: a
/// file, `config.rs`; a folder, `store/`; or "" for every file; the
/// longest prefix wins) may import only from layers at or below `rank`.
pub struct Layer {
    pub name: &'static str,
    pub rank: u32,
    pub prefixes: &'static [&'static str],
}

/// One import as written, resolved to the file that defines its name.
#[derive(Clone, Debug)]
pub struct Import {
    pub from: String,
    pub to: String,
    pub path: String,
}

/// What the guard found; empty when the crate keeps its layers.
#[derive(Debug, Default)]
pub struct Findings {
    /// Imports from a lower layer to a higher one, with both layers named.
    pub upward: Vec<String>,
    /// Groups of files that import each other, with the imports that close
    /// each group.
    pub cycles: Vec<String>,
    /// Files no layer names.
    pub unplaced: Vec<String>,
    pub imports: Vec<Import>,
}

/// A module: its file, the names it defines, its children and its `use`s.
#[derive(Default)]
struct Module {
    file: String,
    defines: BTreeSet<String>,
    children: BTreeMap<String, Vec<String>>,
    /// local name → absolute path (segments from the crate root);
    /// a glob is kept under "*".
    uses: Vec<(String, Vec<String>)>,
    /// Paths written in the module's code (outside `use` items), resolved
    /// against its names once the whole tree is read.
    code_paths: Vec<Vec<String>>,
}

struct Tree {
    modules: HashMap<Vec<String>, Module>,
    /// Names that mean the library from a binary (`anxin_server`).
    library: Option<String>,
}

fn is_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Makes `segments` (as written inside module `here`) absolute.
fn absolute(
    here: &[String],
    segments: &[String],
    tree_children: &BTreeSet<String>,
) -> Option<Vec<String>> {
    let first = segments.first()?;
    let mut out: Vec<String> = match first.as_str() {
        "crate" => vec![],
        "self" => here.to_vec(),
        "super" => {
            let mut base = here.to_vec();
            let mut rest = segments;
            while rest.first().is_some_and(|s| s == "super") {
                base.pop();
                rest = &rest[1..];
            }
            base.extend(rest.iter().cloned());
            return Some(base);
        }
        name if tree_children.contains(name) => {
            // A child module named without `self::` (uniform paths).
            let mut v = here.to_vec();
            v.push(name.to_string());
            v.extend(segments[1..].iter().cloned());
            return Some(v);
        }
        _ => return None,
    };
    out.extend(segments[1..].iter().cloned());
    Some(out)
}

fn flatten_use(
    tree: &syn::UseTree,
    prefix: &mut Vec<String>,
    out: &mut Vec<(String, Vec<String>)>,
) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            flatten_use(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut path = prefix.clone();
            if name != "self" {
                path.push(name.clone());
            }
            let local = if name == "self" {
                prefix.last().cloned().unwrap_or_default()
            } else {
                name
            };
            out.push((local, path));
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            out.push((r.rename.to_string(), path));
        }
        syn::UseTree::Glob(_) => out.push(("*".into(), prefix.clone())),
        syn::UseTree::Group(g) => {
            for item in &g.items {
                flatten_use(item, prefix, out);
            }
        }
    }
}

/// Every path written in a file's code (outside `use` items and test
/// modules), as segments.
#[derive(Default)]
struct Paths {
    found: Vec<Vec<String>>,
}

impl<'a> Visit<'a> for Paths {
    fn visit_path(&mut self, path: &'a syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1 {
            self.found.push(segments);
        }
        syn::visit::visit_path(self, path);
    }
    fn visit_item_use(&mut self, _: &'a syn::ItemUse) {}
    // `pub(in crate::store)` names a scope, not something imported.
    fn visit_visibility(&mut self, _: &'a syn::Visibility) {}
    fn visit_item_mod(&mut self, m: &'a syn::ItemMod) {
        if !is_test(&m.attrs) {
            syn::visit::visit_item_mod(self, m);
        }
    }
    fn visit_item_fn(&mut self, f: &'a syn::ItemFn) {
        if !is_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }
    fn visit_macro(&mut self, mac: &'a syn::Macro) {
        // Paths inside macro calls (format!, metrics::counter!) as tokens.
        let tokens: Vec<proc_macro2::TokenTree> = mac.tokens.clone().into_iter().collect();
        scan_tokens(&tokens, &mut self.found);
        syn::visit::visit_macro(self, mac);
    }
}

fn scan_tokens(tokens: &[proc_macro2::TokenTree], found: &mut Vec<Vec<String>>) {
    use proc_macro2::TokenTree;
    let mut i = 0;
    while i < tokens.len() {
        if let TokenTree::Group(g) = &tokens[i] {
            let inner: Vec<TokenTree> = g.stream().into_iter().collect();
            scan_tokens(&inner, found);
            i += 1;
            continue;
        }
        if let TokenTree::Ident(first) = &tokens[i] {
            let mut segments = vec![first.to_string()];
            let mut j = i + 1;
            loop {
                match (&tokens.get(j), &tokens.get(j + 1), &tokens.get(j + 2)) {
                    (
                        Some(TokenTree::Punct(a)),
                        Some(TokenTree::Punct(b)),
                        Some(TokenTree::Ident(id)),
                    ) if a.as_char() == ':' && b.as_char() == ':' => {
                        segments.push(id.to_string());
                        j += 3;
                    }
                    _ => break,
                }
            }
            if segments.len() > 1 {
                found.push(segments);
            }
            i = j;
            continue;
        }
        i += 1;
    }
}

fn parse(file: &Path) -> syn::File {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", file.display()))
}

/// Reads the module tree from `root_file` (lib.rs or main.rs).
fn read_tree(src: &Path, root_file: &Path, library: Option<String>) -> Tree {
    let mut tree = Tree {
        modules: HashMap::new(),
        library,
    };
    let mut pending: Vec<(Vec<String>, PathBuf, PathBuf)> =
        vec![(vec![], root_file.to_path_buf(), src.to_path_buf())];
    while let Some((module_path, file, dir)) = pending.pop() {
        let ast = parse(&file);
        let rel = file
            .strip_prefix(src.parent().unwrap())
            .unwrap()
            .display()
            .to_string();
        let mut module = Module {
            file: rel.clone(),
            ..Default::default()
        };
        read_items(
            &ast.items,
            &module_path,
            &rel,
            &dir,
            &mut module,
            &mut tree,
            &mut pending,
        );
        tree.modules.insert(module_path, module);
    }
    tree
}

fn read_items(
    items: &[syn::Item],
    module_path: &[String],
    rel: &str,
    dir: &Path,
    module: &mut Module,
    tree: &mut Tree,
    pending: &mut Vec<(Vec<String>, PathBuf, PathBuf)>,
) {
    let mut paths = Paths::default();
    for item in items {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            _ => &[],
        };
        if is_test(attrs) {
            continue;
        }
        match item {
            syn::Item::Mod(m) => {
                let name = m.ident.to_string();
                let mut child_path = module_path.to_vec();
                child_path.push(name.clone());
                match &m.content {
                    Some((_, inner)) => {
                        // An inline module belongs to this file.
                        let mut inner_module = Module {
                            file: rel.to_string(),
                            ..Default::default()
                        };
                        read_items(
                            inner,
                            &child_path,
                            rel,
                            &dir.join(&name),
                            &mut inner_module,
                            tree,
                            pending,
                        );
                        tree.modules.insert(child_path.clone(), inner_module);
                    }
                    None => {
                        let explicit = m.attrs.iter().find_map(|a| {
                            if !a.path().is_ident("path") {
                                return None;
                            }
                            match &a.meta {
                                syn::Meta::NameValue(nv) => match &nv.value {
                                    syn::Expr::Lit(syn::ExprLit {
                                        lit: syn::Lit::Str(s),
                                        ..
                                    }) => Some(s.value()),
                                    _ => None,
                                },
                                _ => None,
                            }
                        });
                        let (file, child_dir) = match explicit {
                            Some(p) => (dir.join(&p), dir.join(&name)),
                            None if dir.join(format!("{name}.rs")).exists() => {
                                (dir.join(format!("{name}.rs")), dir.join(&name))
                            }
                            None => (dir.join(&name).join("mod.rs"), dir.join(&name)),
                        };
                        pending.push((child_path.clone(), file, child_dir));
                    }
                }
                module.children.insert(name, child_path);
            }
            syn::Item::Use(u) => {
                let mut flat = Vec::new();
                flatten_use(&u.tree, &mut Vec::new(), &mut flat);
                module.uses.extend(flat);
            }
            syn::Item::Struct(s) => {
                module.defines.insert(s.ident.to_string());
                paths.visit_item(item);
            }
            syn::Item::Enum(e) => {
                module.defines.insert(e.ident.to_string());
                paths.visit_item(item);
            }
            syn::Item::Fn(f) => {
                module.defines.insert(f.sig.ident.to_string());
                paths.visit_item(item);
            }
            syn::Item::Trait(t) => {
                module.defines.insert(t.ident.to_string());
                paths.visit_item(item);
            }
            syn::Item::Type(t) => {
                module.defines.insert(t.ident.to_string());
                paths.visit_item(item);
            }
            syn::Item::Const(c) => {
                module.defines.insert(c.ident.to_string());
                paths.visit_item(item);
            }
            syn::Item::Static(s) => {
                module.defines.insert(s.ident.to_string());
                paths.visit_item(item);
            }
            syn::Item::Macro(m) => {
                if let Some(ident) = &m.ident {
                    module.defines.insert(ident.to_string());
                }
                paths.visit_item(item);
            }
            other => paths.visit_item(other),
        }
    }
    module.code_paths.extend(paths.found);
}

impl Tree {
    fn children_of(&self, module: &[String]) -> BTreeSet<String> {
        self.modules
            .get(module)
            .map(|m| m.children.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Absolute form of a path written in `here` (None: not ours).
    fn absolute(
        &self,
        here: &[String],
        segments: &[String],
        local_uses: &[(String, Vec<String>)],
    ) -> Option<Vec<String>> {
        let first = segments.first()?;
        if Some(first) == self.library.as_ref() {
            return None; // handled by the caller against the library's tree
        }
        if let Some(abs) = absolute(here, segments, &self.children_of(here)) {
            return Some(abs);
        }
        // A module brought in by a `use` (`use crate::metrics as m; m::X`).
        let (_, target) = local_uses.iter().find(|(local, _)| local == first)?;
        let mut base = absolute(here, target, &self.children_of(here))?;
        base.extend(segments[1..].iter().cloned());
        Some(base)
    }

    /// The file that defines what `path` (absolute) names.
    fn resolve(&self, path: &[String], depth: u32) -> Option<String> {
        let mut module: Vec<String> = vec![];
        let mut rest = path;
        while let Some(first) = rest.first() {
            let Some(m) = self.modules.get(&module) else {
                break;
            };
            match m.children.get(first) {
                Some(child) => {
                    module = child.clone();
                    rest = &rest[1..];
                }
                None => break,
            }
        }
        let m = self.modules.get(&module)?;
        let Some(name) = rest.first() else {
            return Some(m.file.clone());
        };
        if m.defines.contains(name) || depth > 8 {
            return Some(m.file.clone());
        }
        // A re-export: follow the `use` that brings the name in.
        if let Some((_, target)) = m.uses.iter().find(|(local, _)| local == name)
            && let Some(abs) = absolute(&module, target, &self.children_of(&module))
        {
            let mut next = abs;
            next.extend(rest[1..].iter().cloned());
            return self.resolve(&next, depth + 1).or(Some(m.file.clone()));
        }
        Some(m.file.clone())
    }
}

fn imports_of(tree: &Tree, library: Option<&Tree>) -> Vec<Import> {
    let mut out = Vec::new();
    let mut by_module: Vec<(&Vec<String>, &Module)> = tree.modules.iter().collect();
    by_module.sort_by(|a, b| a.0.cmp(b.0));
    for (here, module) in by_module {
        let mut add = |segments: &[String]| {
            let lib_name = tree.library.as_deref();
            if let (Some(lib), Some(first)) = (library, segments.first())
                && Some(first.as_str()) == lib_name
            {
                if let Some(to) = lib.resolve(&segments[1..], 0) {
                    out.push(Import {
                        from: module.file.clone(),
                        to,
                        path: segments.join("::"),
                    });
                }
                return;
            }
            if let Some(abs) = tree.absolute(here, segments, &module.uses)
                && let Some(to) = tree.resolve(&abs, 0)
                && to != module.file
            {
                out.push(Import {
                    from: module.file.clone(),
                    to,
                    path: segments.join("::"),
                });
            }
        };
        for (_, target) in &module.uses {
            add(target);
        }
        for path in &module.code_paths {
            add(path);
        }
    }
    out
}

/// Checks the crate at `crate_dir` (its `src/lib.rs` and, if present,
/// `src/main.rs`, which may reach the library as `library`).
pub fn check(crate_dir: &Path, library: &str, layers: &[Layer]) -> Findings {
    let src = crate_dir.join("src");
    let lib_tree = read_tree(&src, &src.join("lib.rs"), None);
    let mut imports = imports_of(&lib_tree, None);
    let mut files: BTreeSet<String> = lib_tree.modules.values().map(|m| m.file.clone()).collect();
    if src.join("main.rs").exists() {
        let bin_tree = read_tree(&src, &src.join("main.rs"), Some(library.to_string()));
        imports.extend(imports_of(&bin_tree, Some(&lib_tree)));
        files.extend(bin_tree.modules.values().map(|m| m.file.clone()));
    }
    let mut seen = BTreeSet::new();
    imports.retain(|i| seen.insert((i.from.clone(), i.to.clone(), i.path.clone())));

    let layer_of = |file: &str| -> Option<&Layer> {
        let rel = file.strip_prefix("src/").unwrap_or(file);
        layers
            .iter()
            .flat_map(|l| l.prefixes.iter().map(move |p| (l, *p)))
            .filter(|(_, p)| p.is_empty() || rel == *p || (p.ends_with('/') && rel.starts_with(p)))
            .max_by_key(|(_, p)| p.len())
            .map(|(l, _)| l)
    };
    let mut findings = Findings::default();
    for file in &files {
        if layer_of(file).is_none() {
            findings.unplaced.push(file.clone());
        }
    }
    for import in &imports {
        if let (Some(from), Some(to)) = (layer_of(&import.from), layer_of(&import.to))
            && to.rank > from.rank
        {
            findings.upward.push(format!(
                "{} (layer {}) imports `{}` from {} (layer {}, above it)",
                import.from, from.name, import.path, import.to, to.name
            ));
        }
    }
    // Files that reach each other: strongly connected components.
    let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in &imports {
        if i.from != i.to {
            edges.entry(&i.from).or_default().insert(&i.to);
        }
    }
    for component in strongly_connected(&files, &edges) {
        if component.len() < 2 {
            continue;
        }
        let ties: Vec<String> = imports
            .iter()
            .filter(|i| component.contains(&i.from) && component.contains(&i.to) && i.from != i.to)
            .map(|i| format!("    {} -> {} (`{}`)", i.from, i.to, i.path))
            .collect();
        findings.cycles.push(format!(
            "these files import each other: {}\n{}",
            component.iter().cloned().collect::<Vec<_>>().join(", "),
            ties.join("\n")
        ));
    }
    findings.imports = imports;
    findings
}

fn strongly_connected(
    files: &BTreeSet<String>,
    edges: &BTreeMap<&str, BTreeSet<&str>>,
) -> Vec<BTreeSet<String>> {
    // Tarjan's algorithm, iterative enough for a few hundred files.
    struct State<'a> {
        index: HashMap<&'a str, usize>,
        low: HashMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(v: &'a str, edges: &BTreeMap<&'a str, BTreeSet<&'a str>>, s: &mut State<'a>) {
        s.index.insert(v, s.next);
        s.low.insert(v, s.next);
        s.next += 1;
        s.stack.push(v);
        s.on_stack.insert(v);
        for &w in edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, edges, s);
                let lw = s.low[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(lw));
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low[v];
                s.low.insert(v, lv.min(iw));
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut state = State {
        index: HashMap::new(),
        low: HashMap::new(),
        stack: vec![],
        on_stack: BTreeSet::new(),
        next: 0,
        out: vec![],
    };
    for f in files {
        if !state.index.contains_key(f.as_str()) {
            visit(f.as_str(), edges, &mut state);
        }
    }
    state.out
}
