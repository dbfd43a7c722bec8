//! The layer rule of `lib.rs` (a module imports only modules listed above it in its table),
//! checked against the source: every `crate::<module>` path in every file of a module must name
//! a module above it, or itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The modules in the order of the table in `lib.rs`'s docs.
fn table(lib: &str) -> Vec<String> {
    lib.lines()
        .filter_map(|l| l.strip_prefix("//! | "))
        .filter(|l| l.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .flat_map(|l| {
            let modules = l.split('|').nth(1).unwrap_or("");
            modules
                .split(',')
                .map(|m| m.trim().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a source file names as `crate::<module>` (in `use` lines and paths alike, the
/// `use crate::{a, b}` form included).
fn references(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            out.extend(inner.split(',').map(|m| ident(m.trim())));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

#[test]
fn layers_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let order = table(&lib);
    let rank: HashMap<&str, usize> = order
        .iter()
        .enumerate()
        .map(|(i, m)| (m.as_str(), i))
        .collect();
    assert!(
        rank.len() > 20,
        "the layer table in lib.rs was not found: {order:?}"
    );
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut wrong = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if ["lib", "main", "layers"].contains(&module.as_str()) {
            continue;
        }
        seen.insert(module.clone());
        let Some(&own) = rank.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module {module} is not in lib.rs's layer table",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for used in references(&text) {
            match rank.get(used.as_str()) {
                Some(&r) if r < own || used == module => {}
                Some(_) => wrong.push(format!(
                    "{}: {module} uses {used}, listed after it",
                    rel.display()
                )),
                // Not a module: an item of the crate root, or a macro path.
                None => {}
            }
        }
    }
    for m in &order {
        assert!(
            seen.contains(m),
            "lib.rs's layer table names {m}, which has no file"
        );
    }
    assert!(
        wrong.is_empty(),
        "imports that point up:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn references_are_read_in_every_form() {
    let text = "use crate::a::B;\nuse crate::{b, c::D};\nlet x = crate::d::f();";
    assert_eq!(references(text), ["a", "b", "c", "d"]);
}
