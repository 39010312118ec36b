//! The layout's rules, checked on the source: the core (operators, detectors, models,
//! the runtime) never reaches a concrete edge (the HTTP server, Kafka, the webhook,
//! settings, commands, load generators, the variants), modules import each other in a
//! loop only inside one folder, sources and sinks never reach a composition root (the
//! server, settings, commands, the variants), and `kafka/`, the shared client, reaches
//! none of its users.
//!
//! Every `crate::`, `super::` and `self::` path of every `src/**/*.rs` and
//! `dataflows/*.rs` file is resolved to the file that defines it (the longest module
//! prefix that is a file), which gives a graph of files. Unit tests (what follows
//! `#[cfg(test)]`) are left out: a test may use anything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module paths of the core: none of these files may reach an edge, directly or through
/// any chain of imports.
const CORE: &[&str] = &["ops", "detect", "model", "runtime", "controls"];

/// Module paths of the concrete edges and composition roots.
const EDGES: &[&str] = &[
    "server",
    "kafka",
    "sources::http",
    "sources::kafka",
    "sinks::webhook",
    "sinks::kafka",
    "settings",
    "commands",
    "load",
    "dataflows",
];

/// One import: the file it is in, its line, and the module path it names.
#[derive(Clone, Debug)]
struct Import {
    line: usize,
    target: Vec<String>,
}

/// A source file and the module it defines.
struct File {
    path: PathBuf,
    module: Vec<String>,
    imports: Vec<Import>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module a file defines: `src/a/b.rs` and `src/a/b/mod.rs` are `a::b`; the variants
/// in `dataflows/` are mounted at `crate::dataflows`.
fn module_of(path: &Path) -> Option<Vec<String>> {
    let rel = path.strip_prefix(root()).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    match parts.first().map(String::as_str) {
        Some("src") => {
            parts.remove(0);
        }
        Some("dataflows") => {}
        _ => return None,
    }
    let last = parts.pop()?;
    match last.as_str() {
        "lib.rs" if parts.is_empty() => {}
        // the binary is a composition root of its own, outside the library's graph
        "main.rs" if parts.is_empty() => return None,
        "mod.rs" => {}
        name => parts.push(name.trim_end_matches(".rs").to_string()),
    }
    Some(parts)
}

/// The code of a file without comments, string literals' insides and unit tests, one
/// entry per line.
fn code_lines(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut in_block = 0usize;
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        let mut code = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        let mut in_str = false;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            if in_block > 0 {
                if c == '*' && next == Some('/') {
                    in_block -= 1;
                    i += 2;
                } else if c == '/' && next == Some('*') {
                    in_block += 1;
                    i += 2;
                } else {
                    i += 1;
                }
                continue;
            }
            if in_str {
                if c == '\\' {
                    i += 2;
                    continue;
                }
                if c == '"' {
                    in_str = false;
                    code.push('"');
                }
                i += 1;
                continue;
            }
            match (c, next) {
                ('/', Some('/')) => break,
                ('/', Some('*')) => {
                    in_block += 1;
                    i += 2;
                    continue;
                }
                ('"', _) => {
                    in_str = true;
                    code.push('"');
                }
                // a char literal such as '"' or '\"' must not open a string
                ('\'', _) if chars.get(i + 2) == Some(&'\'') => {
                    code.push_str("' '");
                    i += 3;
                    continue;
                }
                ('\'', Some('\\')) if chars.get(i + 3) == Some(&'\'') => {
                    code.push_str("' '");
                    i += 4;
                    continue;
                }
                _ => code.push(c),
            }
            i += 1;
        }
        out.push(code);
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands a `use` tree (`a::{b, c::{d, e as f}}`) into its paths.
fn expand(tree: &str) -> Vec<Vec<String>> {
    fn go(s: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
        // split on top-level commas
        let chars: Vec<char> = s.chars().collect();
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, &c) in chars.iter().enumerate() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(chars[start..i].iter().collect::<String>());
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(chars[start..].iter().collect::<String>());
        for part in parts.into_iter().filter(|p| !p.is_empty()) {
            let mut p = prefix.to_vec();
            if let Some(open) = part.find('{') {
                let head = part[..open].trim_end_matches("::");
                let inner = &part[open + 1..part.rfind('}').expect("balanced braces")];
                p.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
                go(inner, &p, out);
            } else {
                p.extend(
                    part.split("::")
                        .filter(|s| !s.is_empty() && *s != "*")
                        .map(String::from),
                );
                out.push(p);
            }
        }
    }
    // drop renames (`x as y`: the alias is a word of its own), then the whitespace
    let mut cleaned = String::new();
    let mut alias = false;
    for word in tree.split_whitespace() {
        if alias {
            cleaned.push_str(word.trim_start_matches(is_ident));
            alias = false;
        } else if word == "as" {
            alias = true;
        } else {
            cleaned.push_str(word);
        }
    }
    let mut out = Vec::new();
    go(&cleaned, &[], &mut out);
    out
}

/// The module paths a file names, with their lines: `use` trees and `crate::` paths in
/// code, relative ones (`super::`, `self::`, a child module) made absolute.
fn imports_of(module: &[String], children: &BTreeSet<String>, text: &str) -> Vec<Import> {
    let lines = code_lines(text);
    let mut out = Vec::new();
    let absolute = |path: &[String]| -> Option<Vec<String>> {
        let (first, rest) = path.split_first()?;
        let mut base = match first.as_str() {
            "crate" => return Some(rest.to_vec()),
            // `super` of `a::b` (file a/b.rs or a/b/mod.rs) is `a`
            "super" => module[..module.len().saturating_sub(1)].to_vec(),
            "self" => module.to_vec(),
            name if children.contains(name) => return Some([module, path].concat()),
            _ => return None,
        };
        let mut rest = rest;
        while rest.first().is_some_and(|s| s == "super") {
            base.pop();
            rest = &rest[1..];
        }
        base.extend(rest.iter().cloned());
        Some(base)
    };
    // `use` statements, which may span lines
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let body = t
            .strip_prefix("pub use ")
            .or_else(|| t.strip_prefix("pub(crate) use "))
            .or_else(|| t.strip_prefix("use "));
        if let Some(body) = body {
            let start = i;
            let mut stmt = body.to_string();
            while !stmt.contains(';') && i + 1 < lines.len() {
                i += 1;
                stmt.push(' ');
                stmt.push_str(&lines[i]);
            }
            let stmt = stmt.split(';').next().unwrap_or("");
            for path in expand(stmt) {
                if let Some(abs) = absolute(&path) {
                    out.push(Import {
                        line: start + 1,
                        target: abs,
                    });
                }
            }
        }
        i += 1;
    }
    // `crate::a::b` written out in code
    for (n, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        if t.starts_with("use ") || t.starts_with("pub use ") || t.starts_with("pub(crate) use ") {
            continue;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().last();
            let tail = &rest[at + "crate::".len()..];
            if before.is_some_and(is_ident) {
                rest = tail;
                continue;
            }
            let path: Vec<String> = tail
                .split("::")
                .map(|s| s.chars().take_while(|&c| is_ident(c)).collect::<String>())
                .take_while(|s| !s.is_empty())
                .collect();
            out.push(Import {
                line: n + 1,
                target: path,
            });
            rest = tail;
        }
    }
    out
}

fn load() -> Vec<File> {
    let mut paths = Vec::new();
    rust_files(&root().join("src"), &mut paths);
    rust_files(&root().join("dataflows"), &mut paths);
    let modules: Vec<(PathBuf, Vec<String>)> = paths
        .into_iter()
        .filter_map(|p| module_of(&p).map(|m| (p, m)))
        .collect();
    let all: BTreeSet<Vec<String>> = modules.iter().map(|(_, m)| m.clone()).collect();
    modules
        .iter()
        .map(|(path, module)| {
            let text = std::fs::read_to_string(path).unwrap();
            let children: BTreeSet<String> = all
                .iter()
                .filter(|m| m.len() == module.len() + 1 && m.starts_with(module))
                .map(|m| m.last().unwrap().clone())
                .collect();
            // a file's children: `a/b/*.rs` for `a/b.rs` as for `a/b/mod.rs`
            File {
                imports: imports_of(module, &children, &text),
                path: path.clone(),
                module: module.clone(),
            }
        })
        .collect()
}

/// The file defining the longest prefix of `target` that is a module.
fn resolve(files: &[File], target: &[String]) -> Option<usize> {
    (1..=target.len())
        .rev()
        .find_map(|n| files.iter().position(|f| f.module == target[..n]))
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap().display().to_string()
}

fn within(module: &[String], prefix: &str) -> bool {
    let prefix: Vec<&str> = prefix.split("::").collect();
    module.len() >= prefix.len() && module.iter().zip(&prefix).all(|(a, b)| a == b)
}

/// Edges of the file graph: (from, to, line of the import).
fn graph(files: &[File]) -> BTreeMap<usize, BTreeMap<usize, usize>> {
    let mut g: BTreeMap<usize, BTreeMap<usize, usize>> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        let edges = g.entry(i).or_default();
        for imp in &f.imports {
            if let Some(j) = resolve(files, &imp.target) {
                // lib.rs only declares modules; importing the crate root says nothing
                if j != i && !files[j].module.is_empty() {
                    edges.entry(j).or_insert(imp.line);
                }
            }
        }
    }
    g
}

/// The parser sees through `use` trees, `super::` and child modules: a sanity check, so
/// that the rules below cannot pass because nothing was read.
#[test]
fn the_import_graph_is_read() {
    let files = load();
    let g = graph(&files);
    let find = |m: &str| {
        files
            .iter()
            .position(|f| f.module.join("::") == m)
            .unwrap_or_else(|| panic!("no module {m}"))
    };
    let runtime = find("runtime");
    assert!(g[&runtime].contains_key(&find("ops")), "runtime uses ops");
    assert!(
        g[&runtime].contains_key(&find("model")),
        "runtime uses the model"
    );
    // `use super::...` in a submodule
    assert!(g[&find("ops::window")].contains_key(&find("ops")));
    // a `use` tree spread over lines
    assert!(g[&find("sources")].contains_key(&find("sources::generator")));
    assert_eq!(
        expand("crate::{a::B, c::{d, e as f}}"),
        vec![
            vec!["crate", "a", "B"],
            vec!["crate", "c", "d"],
            vec!["crate", "c", "e"]
        ]
    );
}

/// Nothing in the core reaches an edge, directly or through other modules: the source
/// and sink contracts the core uses live in modules that import no edge. A failure names
/// the chain of imports, each with its file and line.
#[test]
fn the_core_never_imports_an_edge() {
    let files = load();
    let g = graph(&files);
    let is_core = |i: usize| CORE.iter().any(|c| within(&files[i].module, c));
    let is_edge = |i: usize| EDGES.iter().any(|e| within(&files[i].module, e));
    let mut problems = Vec::new();
    for start in (0..files.len()).filter(|&i| is_core(i)) {
        // breadth first, remembering how each file was reached
        let mut came_from: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut seen = BTreeSet::from([start]);
        while let Some(i) = queue.pop_front() {
            if is_edge(i) {
                let mut chain = vec![rel(&files[i].path)];
                let mut at = i;
                while let Some(&(prev, line)) = came_from.get(&at) {
                    chain.push(format!("{}:{line}", rel(&files[prev].path)));
                    at = prev;
                }
                chain.reverse();
                problems.push(chain.join(" -> "));
                break;
            }
            for (&j, &line) in &g[&i] {
                if seen.insert(j) {
                    came_from.insert(j, (i, line));
                    queue.push_back(j);
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the core reaches an edge:\n  {}",
        problems.join("\n  ")
    );
}

/// Strongly connected components of the file graph (Tarjan).
fn cycles(g: &BTreeMap<usize, BTreeMap<usize, usize>>, n: usize) -> Vec<Vec<usize>> {
    struct T<'a> {
        g: &'a BTreeMap<usize, BTreeMap<usize, usize>>,
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        out: Vec<Vec<usize>>,
    }
    fn visit(t: &mut T, v: usize) {
        t.index[v] = Some(t.next);
        t.low[v] = t.next;
        t.next += 1;
        t.stack.push(v);
        t.on[v] = true;
        let succ: Vec<usize> = t.g[&v].keys().copied().collect();
        for w in succ {
            match t.index[w] {
                None => {
                    visit(t, w);
                    t.low[v] = t.low[v].min(t.low[w]);
                }
                Some(iw) if t.on[w] => t.low[v] = t.low[v].min(iw),
                _ => {}
            }
        }
        if Some(t.low[v]) == t.index[v] {
            let mut scc = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on[w] = false;
                scc.push(w);
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g,
        index: vec![None; n],
        low: vec![0; n],
        on: vec![false; n],
        stack: Vec::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in 0..n {
        if t.index[v].is_none() {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Modules import each other in a loop only inside one top-level folder (as `ops/` or
/// `kafka/`); a loop through two folders, or through a file at the top, fails and names
/// its files with the imports that close it.
#[test]
fn no_import_loops_across_folders() {
    let files = load();
    let g = graph(&files);
    // the top-level folder of a file; a file at the top is a folder of its own
    let folder = |i: usize| -> String {
        let rel = files[i]
            .path
            .strip_prefix(root().join("src"))
            .unwrap_or(&files[i].path);
        let mut it = rel.iter();
        let first = it.next().unwrap().to_string_lossy().into_owned();
        if it.next().is_some() {
            first
        } else {
            rel.display().to_string()
        }
    };
    let mut problems = Vec::new();
    for scc in cycles(&g, files.len()) {
        let folders: BTreeSet<String> = scc.iter().map(|&i| folder(i)).collect();
        if folders.len() > 1 {
            let members: BTreeSet<usize> = scc.iter().copied().collect();
            let mut lines: Vec<String> = Vec::new();
            for &i in &scc {
                for (&j, &line) in &g[&i] {
                    if members.contains(&j) && folder(i) != folder(j) {
                        lines.push(format!(
                            "{}:{line} imports {}",
                            rel(&files[i].path),
                            rel(&files[j].path)
                        ));
                    }
                }
            }
            lines.sort();
            problems.push(format!(
                "a loop through {}:\n    {}",
                folders.into_iter().collect::<Vec<_>>().join(", "),
                lines.join("\n    ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n  "));
}

/// The first chain of imports from a file matching `from` to one matching `to`, for each
/// such starting file, as `file:line -> ... -> file`.
fn chains(
    files: &[File],
    g: &BTreeMap<usize, BTreeMap<usize, usize>>,
    from: impl Fn(&File) -> bool,
    to: impl Fn(&File) -> bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    for start in (0..files.len()).filter(|&i| from(&files[i])) {
        let mut came_from: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut seen = BTreeSet::from([start]);
        while let Some(i) = queue.pop_front() {
            if to(&files[i]) {
                let mut chain = vec![rel(&files[i].path)];
                let mut at = i;
                while let Some(&(prev, line)) = came_from.get(&at) {
                    chain.push(format!("{}:{line}", rel(&files[prev].path)));
                    at = prev;
                }
                chain.reverse();
                problems.push(chain.join(" -> "));
                break;
            }
            for (&j, &line) in &g[&i] {
                if seen.insert(j) {
                    came_from.insert(j, (i, line));
                    queue.push_back(j);
                }
            }
        }
    }
    problems
}

/// Sources and sinks are parts the composition roots put together, never the other way
/// round: nothing in `sources/` or `sinks/` reaches the server, settings, commands or
/// the variants (so the HTTP ingest queue is a source like the others, and the server
/// only uses it).
#[test]
fn sources_and_sinks_never_reach_a_composition_root() {
    let files = load();
    let g = graph(&files);
    let roots = ["server", "settings", "commands", "dataflows"];
    let problems = chains(
        &files,
        &g,
        |f| within(&f.module, "sources") || within(&f.module, "sinks"),
        |f| roots.iter().any(|r| within(&f.module, r)),
    );
    assert!(
        problems.is_empty(),
        "a source or sink reaches a composition root:\n  {}",
        problems.join("\n  ")
    );
}

/// `src/kafka/` is only the client shared by the Kafka source, sink and load generator:
/// it reaches none of them, nor the runtime, serve's set-up or the commands.
#[test]
fn the_kafka_client_reaches_none_of_its_users() {
    let files = load();
    let g = graph(&files);
    let users = [
        "sources",
        "sinks",
        "load",
        "runtime",
        "server",
        "settings",
        "commands",
        "dataflows",
    ];
    let problems = chains(
        &files,
        &g,
        |f| within(&f.module, "kafka"),
        |f| users.iter().any(|u| within(&f.module, u)),
    );
    assert!(
        problems.is_empty(),
        "the Kafka client reaches a user of it:\n  {}",
        problems.join("\n  ")
    );
}
