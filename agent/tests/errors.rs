//! The agent's library code returns typed errors (docs/layout.md, "Errors"):
//! no `Result<_, String>` and no `anyhow` anywhere under `agent/src` but in
//! the binary's glue (`main.rs` and `cli/`). This test reads every `.rs`
//! file of the library (comments skipped) and names each offending line.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The code of a line without its `//` comment (a `//` inside a string
/// literal is rare enough in this crate to be ignored).
fn code(line: &str) -> &str {
    match line.find("//") {
        Some(i) => &line[..i],
        None => line,
    }
}

/// The top-level type arguments of each `Result<...>` on the line.
fn result_args(line: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("Result<") {
        let after = &rest[i + "Result<".len()..];
        let (mut depth, mut args, mut cur) = (1usize, Vec::new(), String::new());
        let mut end = after.len();
        for (j, c) in after.char_indices() {
            match c {
                '<' | '(' | '[' => {
                    depth += 1;
                    cur.push(c);
                }
                '>' | ')' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        args.push(cur.trim().to_string());
                        end = j;
                        break;
                    }
                    cur.push(c);
                }
                ',' if depth == 1 => args.push(std::mem::take(&mut cur).trim().to_string()),
                _ => cur.push(c),
            }
        }
        out.push(args);
        rest = &after[end.min(after.len())..];
    }
    out
}

fn problems(src: &Path) -> Vec<String> {
    let mut all = Vec::new();
    files(src, &mut all);
    all.sort();
    let mut problems = Vec::new();
    for f in all {
        let rel = f.strip_prefix(src).unwrap();
        if rel == Path::new("main.rs") || rel.starts_with("cli") {
            continue;
        }
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let c = code(line);
            let at = format!("agent/src/{}:{}", rel.display(), n + 1);
            if c.contains("anyhow") {
                problems.push(format!("{at}: anyhow in library code (a thiserror enum instead; docs/layout.md, \"Errors\")"));
            }
            for args in result_args(c) {
                if args.len() == 2 && (args[1] == "String" || args[1] == "std::string::String") {
                    problems.push(format!("{at}: Result<{}, String> (a thiserror enum instead; docs/layout.md, \"Errors\")", args[0]));
                }
            }
        }
    }
    problems
}

#[test]
fn the_scanner_finds_what_it_looks_for() {
    assert_eq!(result_args("fn f() -> Result<Vec<(u8, u16)>, String> {"), vec![vec!["Vec<(u8, u16)>".to_string(), "String".to_string()]]);
    assert_eq!(result_args("x: Result<(), E>, y: std::result::Result<u8, String>").len(), 2);
    assert_eq!(code("let a = 1; // Result<(), String>"), "let a = 1; ");
}

#[test]
fn library_code_has_typed_errors_only() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let p = problems(&src);
    assert!(p.is_empty(), "{} untyped errors in library code:\n{}", p.len(), p.join("\n"));
}
