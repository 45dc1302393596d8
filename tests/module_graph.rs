//! The library's top-level modules depend on each other one way: no cycle
//! between them. The graph is derived from the code (every `crate::module`
//! path, including `use crate::{a, b}` groups, outside comments and string
//! literals), so a new import that closes a cycle fails `make test` with the
//! cycle and the lines that make it.
//!
//! The layers, bottom up: `domain`, `config`, `telemetry`, `exchange`
//! (protocol only), `db`, `rest`; then the sinks, `lake`, `merge`,
//! `instruments`, `backfill`, `archive`, `retention`, `ingest`, `api`;
//! `service` (the supervisor); `cli` and `main.rs` on top.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One dependency: `from` names `to` at `file:line`.
#[derive(Debug, Clone)]
struct Edge {
    file: PathBuf,
    line: usize,
}

type Graph = BTreeMap<String, BTreeMap<String, Edge>>;

/// The text of `source` with comments and string literals blanked (same
/// length and lines, so positions still point at the file).
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = bytes.to_vec();
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for b in &mut out[from..to] {
            if *b != b'\n' {
                *b = b' ';
            }
        }
    };
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                let end = source[i..].find('\n').map_or(bytes.len(), |n| i + n);
                blank(&mut out, i, end);
                i = end;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest in Rust.
                let (mut depth, mut j) = (1, i + 2);
                while j < bytes.len() && depth > 0 {
                    if bytes[j] == b'/' && bytes.get(j + 1) == Some(&b'*') {
                        depth += 1;
                        j += 2;
                    } else if bytes[j] == b'*' && bytes.get(j + 1) == Some(&b'/') {
                        depth -= 1;
                        j += 2;
                    } else {
                        j += 1;
                    }
                }
                blank(&mut out, i, j);
                i = j;
            }
            b'r' if matches!(bytes.get(i + 1), Some(b'"' | b'#'))
                && (i == 0 || !is_ident(bytes[i - 1])) =>
            {
                // A raw string: r"…", r#"…"#.
                let hashes = bytes[i + 1..].iter().take_while(|b| **b == b'#').count();
                if bytes.get(i + 1 + hashes) != Some(&b'"') {
                    i += 1;
                    continue;
                }
                let close = format!("\"{}", "#".repeat(hashes));
                let body = i + 2 + hashes;
                let end = source[body..]
                    .find(&close)
                    .map_or(bytes.len(), |n| body + n + close.len());
                blank(&mut out, i, end);
                i = end;
            }
            b'"' => {
                let mut j = i + 1;
                while j < bytes.len() && bytes[j] != b'"' {
                    j += if bytes[j] == b'\\' { 2 } else { 1 };
                }
                let end = (j + 1).min(bytes.len());
                blank(&mut out, i, end);
                i = end;
            }
            b'\'' => {
                // A char literal ('a', '\n', '"'), not a lifetime ('a).
                let end = if bytes.get(i + 1) == Some(&b'\\') {
                    source[i + 3..].find('\'').map(|n| i + 3 + n + 1)
                } else if bytes.get(i + 2) == Some(&b'\'') {
                    Some(i + 3)
                } else {
                    source[i + 1..]
                        .chars()
                        .next()
                        .filter(|c| c.len_utf8() > 1)
                        .and_then(|c| {
                            let after = i + 1 + c.len_utf8();
                            (bytes.get(after) == Some(&b'\'')).then_some(after + 1)
                        })
                };
                match end {
                    Some(end) => {
                        blank(&mut out, i, end);
                        i = end;
                    }
                    None => i += 1,
                }
            }
            _ => i += 1,
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8 (only ASCII bytes are replaced)")
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// The top-level modules `code` names through `crate::`, with their lines.
fn crate_references(code: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let mut from = 0;
    while let Some(n) = code[from..].find("crate::") {
        let at = from + n;
        from = at + "crate::".len();
        if at > 0 && (is_ident(bytes[at - 1]) || bytes[at - 1] == b'$') {
            continue; // `$crate::`, `my_crate::`
        }
        let rest = &code[from..];
        if let Some(group) = rest.trim_start().strip_prefix('{') {
            // `crate::{a, b::c, d as e}`: the first segment of each item, at
            // the group's top level.
            let mut depth = 0;
            let mut item_start = true;
            let offset = from + (rest.len() - rest.trim_start().len()) + 1;
            for (k, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if item_start && depth == 0 && (c.is_alphabetic() || c == '_') => {
                        let name: String = group[k..]
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        out.push((name, line_of(offset + k)));
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push((name, line_of(at)));
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The graph of the top-level modules of the crate rooted at `src`: a file
/// `src/x.rs` or `src/x/…` belongs to module `x` (the crate roots `lib.rs`
/// and `main.rs` are left out: they sit on top).
fn module_graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph = Graph::new();
    for file in files {
        let relative = file.strip_prefix(src).unwrap();
        let first = relative.components().next().unwrap().as_os_str();
        let module = Path::new(first)
            .file_stem()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if relative.components().count() == 1 && (module == "lib" || module == "main") {
            continue;
        }
        let source = std::fs::read_to_string(&file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        for (target, line) in crate_references(&code_only(&source)) {
            if target != module && target != "self" && target != "super" {
                deps.entry(target).or_insert(Edge {
                    file: Path::new(src.file_name().unwrap_or_default()).join(relative),
                    line,
                });
            }
        }
    }
    graph
}

/// The strongly connected components with more than one module (Tarjan).
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(deps) = s.graph.get(v) {
            for w in deps.keys() {
                let w = w.as_str();
                if !s.graph.contains_key(w) {
                    continue; // not a module of this crate (`crate::` in a macro)
                }
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let low = s.low[v].min(s.low[w]);
                    s.low.insert(v, low);
                } else if s.on_stack.contains(w) {
                    let low = s.low[v].min(s.index[w]);
                    s.low.insert(v, low);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.found
}

/// The edges inside each cycle, one per line, for the failure message.
fn explain(graph: &Graph, found: &[Vec<String>]) -> String {
    let mut out = String::new();
    for component in found {
        out.push_str(&format!("cycle between {}:\n", component.join(", ")));
        for from in component {
            for (to, edge) in &graph[from] {
                if component.contains(to) {
                    out.push_str(&format!(
                        "  {from} -> {to}  ({}:{})\n",
                        edge.file.display(),
                        edge.line
                    ));
                }
            }
        }
    }
    out
}

#[test]
fn the_top_level_modules_have_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = module_graph(&src);
    assert!(graph.contains_key("domain") && graph.contains_key("merge"));
    let found = cycles(&graph);
    assert!(found.is_empty(), "{}", explain(&graph, &found));
}

#[test]
fn a_cycle_is_found_and_named_with_its_lines() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "pub mod a; pub mod b; pub mod c;\n").unwrap();
    std::fs::write(
        src.join("a.rs"),
        "// crate::c in a comment is no edge\nuse crate::{b::x, c as d};\n",
    )
    .unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod inner;\n").unwrap();
    std::fs::write(
        src.join("b/inner.rs"),
        "const S: &str = \"crate::c\";\nfn f() { crate::a::g(); }\n",
    )
    .unwrap();
    std::fs::write(src.join("c.rs"), "/* crate::a */ fn h() {}\n").unwrap();
    let graph = module_graph(src);
    assert_eq!(
        graph["a"].keys().collect::<Vec<_>>(),
        ["b", "c"],
        "the group's two modules"
    );
    assert_eq!(graph["b"].keys().collect::<Vec<_>>(), ["a"]);
    assert!(graph["c"].is_empty(), "comments and strings are no edges");
    let found = cycles(&graph);
    assert_eq!(found, vec![vec!["a".to_string(), "b".to_string()]]);
    let message = explain(&graph, &found);
    assert!(
        message.contains("a -> b") && message.contains("b -> a") && message.contains("inner.rs:2"),
        "{message}"
    );
}

#[test]
fn literals_and_comments_are_blanked_in_place() {
    let code = code_only("let a = 'x'; let s = r#\"crate::y\"#; /* a /* nested */ crate::z */ f::<'a>();\n// crate::w\ncrate::v");
    assert!(!code.contains("crate::y") && !code.contains("crate::z") && !code.contains("crate::w"));
    assert_eq!(crate_references(&code), vec![("v".to_string(), 3)]);
}
