//! The server's modules form layers (see `ARCHITECTURE.md`): `edge` above `documents` above
//! `access` above `infra` above `base`. This test reads `server/src` and fails when a module
//! imports from a layer above its own, or when modules import each other in a cycle (between
//! layers, or between the modules of one layer). Unit-test modules (`#[cfg(test)] mod tests`)
//! may import freely and are not read, nor are comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first.
const LAYERS: [&str; 5] = ["base", "infra", "access", "documents", "edge"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `edge/ws.rs` -> ["edge", "ws"]; `documents/mod.rs` -> ["documents"].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The code of a file without its unit-test module and comments (a doc link is not an
/// import).
fn code(file: &Path) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => &text[..],
    };
    text.lines()
        .map(|line| match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Module paths (as `a::b` segments) that `text` names after `crate::` or `super::`, resolved
/// against the file's own module path. `use crate::{a::x, b}` groups are expanded.
fn references(module: &[String], text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    // The module `super` names: the parent of the file's module (`a/mod.rs` is module `a`,
    // so its `super` is the crate root, as for `a.rs`).
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = text;
        while let Some(at) = rest.find(prefix) {
            let before = rest[..at].chars().last();
            rest = &rest[at + prefix.len()..];
            if before.is_some_and(is_ident) {
                continue;
            }
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let path: Vec<String> = item
                        .trim()
                        .split("::")
                        .map(|s| s.trim().to_owned())
                        .filter(|s| !s.is_empty() && s.chars().all(is_ident))
                        .collect();
                    if !path.is_empty() {
                        out.push(base.iter().cloned().chain(path).collect());
                    }
                }
                continue;
            }
            let end = rest
                .find(|c: char| !(is_ident(c) || c == ':'))
                .unwrap_or(rest.len());
            let path: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            out.push(base.iter().cloned().chain(path).collect());
        }
    }
    out
}

/// Every edge between modules at `depth` (1: layers; 2: the modules of a layer), with the
/// files that make it.
fn edges(depth: usize) -> BTreeMap<(String, String), BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<Vec<String>> = files.iter().map(|f| module_path(&src, f)).collect();
    let known = |p: &[String]| {
        modules
            .iter()
            .any(|m| m.len() >= p.len() && m[..p.len()] == *p)
    };
    let mut out: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let module = module_path(&src, file);
        if module.is_empty() || module == ["lib"] || module == ["main"] {
            continue;
        }
        let from = module[..depth.min(module.len())].join("::");
        for reference in references(&module, &code(file)) {
            let cut = &reference[..depth.min(reference.len())];
            if cut.is_empty() || !known(cut) {
                continue;
            }
            let to = cut.join("::");
            if to != from {
                out.entry((from.clone(), to))
                    .or_default()
                    .insert(file.strip_prefix(&src).unwrap().display().to_string());
            }
        }
    }
    out
}

/// Strongly connected components with more than one module.
fn cycles(edges: &BTreeMap<(String, String), BTreeSet<String>>) -> Vec<Vec<String>> {
    let nodes: BTreeSet<&String> = edges.keys().flat_map(|(a, b)| [a, b]).collect();
    let reaches = |from: &String, to: &String| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n) {
                stack.extend(edges.keys().filter(|(a, _)| a == n).map(|(_, b)| b));
            }
        }
        false
    };
    let mut done: BTreeSet<&String> = BTreeSet::new();
    let mut out = Vec::new();
    for n in &nodes {
        if done.contains(n) {
            continue;
        }
        let component: Vec<String> = nodes
            .iter()
            .filter(|m| reaches(n, m) && reaches(m, n))
            .map(|m| (*m).clone())
            .collect();
        for m in &component {
            done.insert(nodes.iter().find(|x| **x == m).unwrap());
        }
        if component.len() > 1 {
            out.push(component);
        }
    }
    out
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let layer = |m: &str| {
        LAYERS
            .iter()
            .position(|l| *l == m)
            .unwrap_or_else(|| panic!("module `{m}` is in no layer: add it to LAYERS"))
    };
    let wrong: Vec<String> = edges(1)
        .into_iter()
        .filter(|((from, to), _)| layer(from) < layer(to))
        .map(|((from, to), files)| format!("{from} -> {to} (in {files:?})"))
        .collect();
    assert!(wrong.is_empty(), "imports from a layer above: {wrong:#?}");
}

#[test]
fn no_import_cycles_between_modules() {
    for depth in [1, 2] {
        let e = edges(depth);
        assert!(e.len() > 5, "depth {depth}: too few edges found ({e:?})");
        let found = cycles(&e);
        assert!(found.is_empty(), "depth {depth}: import cycles {found:#?}");
    }
}

#[test]
fn the_reader_sees_crate_and_super_paths() {
    let module = vec!["edge".to_owned(), "ws".to_owned()];
    let text = "use super::state::AppState;\nuse crate::{base::close::Close, infra};\nlet x = crate::documents::outbox::outbox(1);\nmy_crate::nothing";
    let refs = references(&module, text);
    let refs: Vec<String> = refs.iter().map(|r| r.join("::")).collect();
    assert!(
        refs.contains(&"documents::outbox::outbox".to_owned()),
        "{refs:?}"
    );
    assert!(refs.contains(&"base::close::Close".to_owned()), "{refs:?}");
    assert!(refs.contains(&"infra".to_owned()), "{refs:?}");
    assert!(
        refs.contains(&"edge::state::AppState".to_owned()),
        "{refs:?}"
    );
    assert!(!refs.iter().any(|r| r.contains("nothing")), "{refs:?}");
}
