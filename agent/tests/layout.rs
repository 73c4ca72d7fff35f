//! The agent's layout (README, "Layout"; docs/layout.md): the top-level
//! modules of `agent/src` depend on each other in one direction only,
//!
//! ```text
//! clock <- leaves (paths, statefile, localsock, eventlog) <- config <- datapath, control <- services <- daemon <- cli <- main.rs
//! ```
//!
//! This test reads every `.rs` file under `agent/src`, collects the paths
//! that name a module of the crate (`crate::x`, `crate::{x, y::z}`,
//! `baton_agent::x`, `super::x`; comments are skipped), builds the graph of
//! top-level modules and fails on any edge that does not point down the
//! order above (which also rules out every cycle), naming the edge with the
//! file and line that makes it. A new top-level module must be given its
//! place in [`ORDER`] first.
//!
//! The same paths, resolved to the module (file, or inline module) they
//! name, give the graph of all the crate's modules (`services::svc ->
//! services::handover`); `no_import_cycle_among_the_agents_modules` fails
//! on every cycle in it, inside a directory too, printing its edges with
//! file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The documented order, lowest first. A module may use only modules of a
/// lower rank; modules of the same rank may not use each other.
const ORDER: &[(&str, &[&str])] = &[
    // `lib.rs`'s helpers of the unit tests (`#[cfg(test)]`).
    ("test helpers", &["test_util"]),
    ("the clock", &["clock"]),
    ("leaves", &["paths", "statefile", "localsock", "eventlog"]),
    ("config", &["config"]),
    ("datapath and control", &["datapath", "control"]),
    ("services", &["services"]),
    ("daemon", &["daemon"]),
    ("cli", &["cli"]),
    ("the binary", &["main"]),
];

fn rank(module: &str) -> Option<usize> {
    ORDER.iter().position(|(_, ms)| ms.contains(&module))
}

/// One use of another top-level module.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Edge {
    from: String,
    to: String,
    file: String,
    line: usize,
}

/// The module path of a file under `src/` (`services/svc.rs` is
/// `["services", "svc"]`, `config/mod.rs` is `["config"]`, `main.rs` is
/// `["main"]`; `lib.rs` is the root, `[]`).
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The text with comments replaced by spaces (line breaks kept, so that
/// offsets still give line numbers). String literals are kept as they are.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        if in_str {
            if b[i] == b'\\' && i + 1 < b.len() {
                out.extend_from_slice(&b[i..i + 2]);
                i += 2;
                continue;
            }
            if b[i] == b'"' {
                in_str = false;
            }
            out.push(b[i]);
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                out.push(b' ');
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            let mut depth = 0;
            while i < b.len() {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(if b[i] == b'\n' { b'\n' } else { b' ' });
                    i += 1;
                }
            }
        } else {
            // A char literal '"' must not open a string.
            if b[i] == b'\'' && i + 2 < b.len() && b[i + 2] == b'\'' {
                out.extend_from_slice(&b[i..i + 3]);
                i += 3;
                continue;
            }
            if b[i] == b'"' {
                in_str = true;
            }
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("comments are replaced by ASCII spaces only")
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn ident_at(b: &[u8], mut i: usize) -> (String, usize) {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    let start = i;
    while i < b.len() && is_ident(b[i]) {
        i += 1;
    }
    (String::from_utf8_lossy(&b[start..i]).into_owned(), start)
}

/// The top-level names used in one file, each with the byte offset where it
/// is written: `crate::a::b` gives `a`, `crate::{a, b::c}` gives `a` and `b`,
/// `baton_agent::a` gives `a`, `super::a` in `x/y.rs` gives `x` (the
/// module path resolved against the file's own).
fn uses(rel: &str, src: &str) -> Vec<(String, usize)> {
    let b = src.as_bytes();
    let own = module_path(rel);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !is_ident(b[i - 1]);
        let prefix = ["crate::", "baton_agent::", "super::"].into_iter().find(|p| word_start && b[i..].starts_with(p.as_bytes()));
        let Some(prefix) = prefix else {
            i += 1;
            continue;
        };
        let mut j = i + prefix.len();
        if prefix == "super::" {
            // super::super::x from the file's module path.
            let mut up = 1;
            while b[j..].starts_with(b"super::") {
                up += 1;
                j += "super::".len();
            }
            let (name, at) = ident_at(b, j);
            let mut path: Vec<String> = own.iter().take(own.len().saturating_sub(up)).cloned().collect();
            if !name.is_empty() {
                path.push(name);
            }
            if let Some(top) = path.first() {
                out.push((top.clone(), at));
            }
            i = j.max(at);
            continue;
        }
        if b.get(j) == Some(&b'{') {
            // A use group: every item at depth 1.
            let mut depth = 0;
            let mut k = j;
            let mut item_start = true;
            while k < b.len() {
                match b[k] {
                    b'{' => {
                        depth += 1;
                        if depth == 1 {
                            item_start = true;
                        }
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => item_start = true,
                    c if item_start && depth == 1 && is_ident(c) => {
                        let (name, at) = ident_at(b, k);
                        out.push((name, at));
                        item_start = false;
                        k = at + 1;
                        continue;
                    }
                    _ => {}
                }
                k += 1;
            }
            i = k;
            continue;
        }
        let (name, at) = ident_at(b, j);
        if !name.is_empty() {
            out.push((name, at));
        }
        i = j.max(at) + 1;
    }
    out
}

fn line_of(src: &str, offset: usize) -> usize {
    src[..offset].bytes().filter(|&c| c == b'\n').count() + 1
}

/// The edges between top-level modules in the given files (path relative
/// to `src/`, text). Names that are not modules of the crate (`crate::*`,
/// a `use super::*` of a test module, a re-exported item) are left out.
fn edges(files: &[(String, String)]) -> Vec<Edge> {
    let tops: Vec<String> = files.iter().filter_map(|(rel, _)| module_path(rel).first().cloned()).collect();
    let mut out = Vec::new();
    for (rel, src) in files {
        let Some(from) = module_path(rel).first().cloned() else { continue };
        let code = strip_comments(src);
        for (to, at) in uses(rel, &code) {
            if to == from || !(tops.contains(&to) || to == "test_util") {
                continue;
            }
            out.push(Edge { from: from.clone(), to, file: format!("agent/src/{rel}"), line: line_of(&code, at) });
        }
    }
    out
}

/// Every violation of the order, one line each, and every cycle.
fn check(files: &[(String, String)]) -> Vec<String> {
    let edges = edges(files);
    let mut problems = Vec::new();
    for e in &edges {
        match (rank(&e.from), rank(&e.to)) {
            (None, _) => problems.push(format!("{}:{}: module `{}` has no place in the layout order (agent/tests/layout.rs ORDER, docs/layout.md)", e.file, e.line, e.from)),
            (_, None) => problems.push(format!("{}:{}: module `{}` has no place in the layout order (agent/tests/layout.rs ORDER, docs/layout.md)", e.file, e.line, e.to)),
            (Some(a), Some(b)) if a <= b => problems.push(format!(
                "{}:{}: `{}` ({}) uses `{}` ({}): a dependency against the layout order",
                e.file, e.line, e.from, ORDER[a].0, e.to, ORDER[b].0
            )),
            _ => {}
        }
    }
    for cycle in cycles(&edges) {
        problems.push(format!("import cycle: {cycle}"));
    }
    problems.sort();
    problems.dedup();
    problems
}

/// The import cycles of the module graph: each set of modules that reach
/// each other (a strongly connected component), with the edges among them.
fn cycles(edges: &[Edge]) -> Vec<String> {
    let mut graph: BTreeMap<&str, BTreeMap<&str, &Edge>> = BTreeMap::new();
    for e in edges {
        graph.entry(&e.from).or_default().entry(&e.to).or_insert(e);
    }
    let reach = |from: &str| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for &next in graph.get(m.as_str()).into_iter().flat_map(|n| n.keys()) {
                if seen.insert(next.to_string()) {
                    todo.push(next.to_string());
                }
            }
        }
        seen
    };
    let mut found = Vec::new();
    let mut placed = BTreeSet::new();
    for &m in graph.keys() {
        if placed.contains(m) {
            continue;
        }
        let from_m = reach(m);
        if !from_m.contains(m) {
            continue;
        }
        let scc: BTreeSet<String> = from_m.iter().filter(|o| reach(o).contains(m)).cloned().collect();
        let mut s = format!("{{{}}}:", scc.iter().cloned().collect::<Vec<_>>().join(", "));
        for a in &scc {
            for (&b, e) in graph.get(a.as_str()).into_iter().flatten() {
                if scc.contains(b) {
                    s += &format!(" {a} -> {b} ({}:{});", e.file, e.line);
                }
            }
        }
        placed.extend(scc);
        found.push(s);
    }
    found
}

fn read_src(dir: &Path, base: &Path, out: &mut Vec<(String, String)>) {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            read_src(&p, base, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(base).unwrap().to_string_lossy().replace('\\', "/");
            out.push((rel, std::fs::read_to_string(&p).unwrap()));
        }
    }
}

#[test]
fn agent_modules_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_src(&src, &src, &mut files);
    assert!(files.len() > 30, "read only {} files from {}", files.len(), src.display());
    let edges = edges(&files);
    // The check sees the edges that exist (not an empty graph).
    assert!(edges.iter().any(|e| e.from == "daemon" && e.to == "services"), "{edges:?}");
    let problems = check(&files);
    assert!(problems.is_empty(), "the agent's layout (docs/layout.md):\n{}", problems.join("\n"));
}

fn fixture(files: &[(&str, &str)]) -> Vec<(String, String)> {
    files.iter().map(|(p, s)| (p.to_string(), s.to_string())).collect()
}

#[test]
fn a_back_edge_is_named_with_its_file_and_line() {
    let files = fixture(&[
        ("lib.rs", "pub mod config;\npub mod services;\npub mod paths;\n"),
        ("paths.rs", "pub fn x() {}\n"),
        ("config/mod.rs", "use crate::paths;\n\n// crate::services in a comment is no use\nfn f() { crate::services::svc::g(); }\n"),
        ("services/mod.rs", "pub mod svc;\n"),
        ("services/svc.rs", "use crate::{\n    config::Config,\n    paths,\n};\npub fn g() {}\n"),
    ]);
    let problems = check(&files);
    assert!(problems.iter().any(|p| p.starts_with("agent/src/config/mod.rs:4: `config` (config) uses `services` (services)")), "{problems:#?}");
    assert!(problems.contains(&"import cycle: {config, services}: config -> services (agent/src/config/mod.rs:4); services -> config (agent/src/services/svc.rs:2);".to_string()), "{problems:#?}");
    // Nothing else: the comment and the downward edges are fine.
    assert_eq!(problems.len(), 2, "{problems:#?}");
}

#[test]
fn siblings_and_unplaced_modules_are_refused_and_super_is_resolved() {
    let files = fixture(&[
        ("datapath/mod.rs", "pub mod sender;\n"),
        ("datapath/sender.rs", "use super::super::control::channel;\nuse super::Thing;\n"),
        ("control/mod.rs", "pub mod channel;\n"),
        ("control/channel.rs", "\n"),
        ("gadget.rs", "use crate::config;\n"),
        ("config/mod.rs", "\n"),
        ("main.rs", "use baton_agent::{config, datapath::sender};\n"),
    ]);
    let problems = check(&files);
    assert_eq!(
        problems,
        vec![
            "agent/src/datapath/sender.rs:1: `datapath` (datapath and control) uses `control` (datapath and control): a dependency against the layout order".to_string(),
            "agent/src/gadget.rs:1: module `gadget` has no place in the layout order (agent/tests/layout.rs ORDER, docs/layout.md)".to_string(),
        ]
    );
}

// ---------------------------------------------------------------------------
// Cycles among modules (not only directories).
// ---------------------------------------------------------------------------

/// The same text with the contents of string literals blanked (for brace
/// matching: a `{` in a string opens nothing).
fn blank_strings(code: &str) -> Vec<u8> {
    let b = code.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\'' && i + 2 < b.len() && b[i + 2] == b'\'' {
            out[i + 1] = b' ';
            i += 3;
        } else if b[i] == b'\'' && i + 3 < b.len() && b[i + 1] == b'\\' && b[i + 3] == b'\'' {
            out[i + 1] = b' ';
            out[i + 2] = b' ';
            i += 4;
        } else if b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    out[i] = b' ';
                    if b[i + 1] != b'\n' {
                        out[i + 1] = b' ';
                    }
                    i += 2;
                    continue;
                }
                if b[i] != b'\n' {
                    out[i] = b' ';
                }
                i += 1;
            }
            i += 1;
        } else {
            i += 1;
        }
    }
    out
}

/// The inline modules of a file (`mod tests { ... }`): name and the byte
/// range of their body, so that `super::` inside one resolves against it.
fn inline_mods(b: &[u8]) -> Vec<(String, usize, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 < b.len() {
        if (i == 0 || !is_ident(b[i - 1])) && b[i..].starts_with(b"mod ") {
            let (name, at) = ident_at(b, i + 4);
            let mut k = at + name.len();
            while k < b.len() && b[k].is_ascii_whitespace() {
                k += 1;
            }
            if !name.is_empty() && b.get(k) == Some(&b'{') {
                let mut depth = 0;
                let mut end = k;
                while end < b.len() {
                    match b[end] {
                        b'{' => depth += 1,
                        b'}' => {
                            depth -= 1;
                            if depth == 0 {
                                break;
                            }
                        }
                        _ => {}
                    }
                    end += 1;
                }
                out.push((name, k, end));
            }
        }
        i += 1;
    }
    out
}

/// The module path of the code at `offset` of a file: the file's own path
/// and the inline modules around it.
fn path_at(own: &[String], mods: &[(String, usize, usize)], offset: usize) -> Vec<String> {
    let mut p = own.to_vec();
    for (name, start, end) in mods {
        if *start < offset && offset < *end {
            p.push(name.clone());
        }
    }
    p
}

/// Reads one path segment list `a::b::c` from `j`, then a use group
/// (`{x, y::z}`, recursively), returning every full path with the offset of
/// its first segment.
fn use_tree(b: &[u8], mut j: usize, prefix: Vec<String>, out: &mut Vec<(Vec<String>, usize)>) -> usize {
    let mut path = prefix;
    let mut first_at = None;
    loop {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if b.get(j) == Some(&b'{') {
            j += 1;
            loop {
                while j < b.len() && (b[j].is_ascii_whitespace() || b[j] == b',') {
                    j += 1;
                }
                if j >= b.len() || b[j] == b'}' {
                    break;
                }
                let before = j;
                j = use_tree(b, j, path.clone(), out);
                if j == before {
                    j += 1; // `*` or anything unparsed
                }
                // skip `as name`
                while j < b.len() && b[j] != b',' && b[j] != b'}' {
                    if b[j] == b'{' {
                        break;
                    }
                    j += 1;
                }
            }
            return j + 1;
        }
        let (name, at) = ident_at(b, j);
        if name.is_empty() {
            break;
        }
        first_at.get_or_insert(at);
        if name != "self" {
            path.push(name.clone());
        }
        j = at + name.len();
        if b[j..].starts_with(b"::") {
            j += 2;
        } else {
            break;
        }
    }
    if let Some(at) = first_at {
        out.push((path, at));
    } else if !path.is_empty() {
        out.push((path, j));
    }
    j
}

/// Every module-level use of one file: (module path of the code, full path
/// named, offset). `crate::`, `baton_agent::`, `super::` and `self::` paths
/// are resolved to paths from the crate root.
fn full_uses(rel: &str, code: &str) -> Vec<(Vec<String>, Vec<String>, usize)> {
    let own = module_path(rel);
    let blanked = blank_strings(code);
    let b = &blanked[..];
    let mods = inline_mods(b);
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !(is_ident(b[i - 1]) || b[i - 1] == b':');
        let prefix = ["crate::", "baton_agent::", "super::", "self::"].into_iter().find(|p| word_start && b[i..].starts_with(p.as_bytes()));
        let Some(prefix) = prefix else {
            i += 1;
            continue;
        };
        let here = path_at(&own, &mods, i);
        let mut j = i + prefix.len();
        let base: Vec<String> = match prefix {
            "super::" => {
                let mut up = 1;
                while b[j..].starts_with(b"super::") {
                    up += 1;
                    j += "super::".len();
                }
                here.iter().take(here.len().saturating_sub(up)).cloned().collect()
            }
            "self::" => here.clone(),
            _ => Vec::new(),
        };
        let mut found = Vec::new();
        j = use_tree(b, j, base, &mut found);
        for (path, at) in found {
            out.push((here.clone(), path, at));
        }
        i = j.max(i + 1);
    }
    out
}

/// The edges between the modules (files) of the crate: `services::svc ->
/// services::handover`. A path names the longest module it starts with;
/// a module's use of itself or of the crate root is no edge. An inline
/// module (`mod tests { .. }`) is a module of its own: a test that uses a
/// module that uses the tested one makes no cycle.
fn module_edges(files: &[(String, String)]) -> Vec<Edge> {
    let mut known: BTreeSet<Vec<String>> = BTreeSet::new();
    for (rel, src) in files {
        let own = module_path(rel);
        for (name, _, _) in inline_mods(&blank_strings(&strip_comments(src))) {
            known.insert(own.iter().cloned().chain([name]).collect());
        }
        known.insert(own);
    }
    known.remove(&Vec::new());
    let mut out = Vec::new();
    for (rel, src) in files {
        let code = strip_comments(src);
        for (from, path, at) in full_uses(rel, &code) {
            if from.is_empty() {
                continue;
            }
            let Some(to) = (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| known.contains(p)) else { continue };
            if to == from {
                continue;
            }
            out.push(Edge { from: from.join("::"), to: to.join("::"), file: format!("agent/src/{rel}"), line: line_of(&code, at) });
        }
    }
    out
}

#[test]
fn no_import_cycle_among_the_agents_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    read_src(&src, &src, &mut files);
    let edges = module_edges(&files);
    // The check sees edges inside a directory too (not an empty graph).
    assert!(edges.iter().any(|e| e.from == "services::svc" && e.to == "services::resource"), "{edges:?}");
    let found = cycles(&edges);
    assert!(found.is_empty(), "import cycles among the agent's modules (docs/layout.md):\n{}", found.iter().map(|c| format!("import cycle: {c}")).collect::<Vec<_>>().join("\n"));
}

#[test]
fn a_cycle_inside_a_directory_is_found_and_a_test_module_is_a_module_of_its_own() {
    let files = fixture(&[
        ("services/mod.rs", "pub mod a;\npub mod b;\npub mod c;\npub mod d;\n"),
        ("services/a.rs", "use super::b::X;\npub fn g() {}\n"),
        ("services/b.rs", "pub struct X;\nfn f() {\n    let s = \"{\";\n    crate::{config, services::{c::Z, a::g}}();\n}\n"),
        // c's tests use d, d uses c: no cycle (c::tests is not c).
        ("services/c.rs", "pub struct Z;\n#[cfg(test)]\nmod tests {\n    use super::super::d;\n    use super::Z;\n}\n"),
        ("services/d.rs", "use crate::services::c::Z;\n"),
        ("config/mod.rs", "\n"),
    ]);
    let edges = module_edges(&files);
    let e = |from: &str, to: &str| edges.iter().find(|e| e.from == from && e.to == to).map(|e| format!("{}:{}", e.file, e.line));
    assert_eq!(e("services::b", "services::a").as_deref(), Some("agent/src/services/b.rs:4"), "{edges:#?}");
    assert_eq!(e("services::b", "config").as_deref(), Some("agent/src/services/b.rs:4"), "{edges:#?}");
    assert_eq!(e("services::c::tests", "services::d").as_deref(), Some("agent/src/services/c.rs:4"), "{edges:#?}");
    assert_eq!(e("services::c", "services::d"), None, "{edges:#?}");
    assert_eq!(
        cycles(&edges),
        vec!["{services::a, services::b}: services::a -> services::b (agent/src/services/a.rs:1); services::b -> services::a (agent/src/services/b.rs:4);".to_string()]
    );
}
