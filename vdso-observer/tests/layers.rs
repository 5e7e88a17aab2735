//! The layering of docs/ARCHITECTURE.md, checked on the sources: which top-level
//! modules each layer may name through `crate::`.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

/// Layer (top-level module or file) -> the other top-level modules it may use.
const ALLOWED: &[(&str, &[&str])] = &[
    ("model", &[]),
    ("metric_families", &[]),
    ("kernel", &["model", "host"]),
    ("host", &["model"]),
    ("measure", &["model", "kernel", "host"]),
    ("settings", &["model", "kernel"]),
    (
        "session",
        &["model", "kernel", "host", "measure", "settings"],
    ),
    ("ui", &["model", "session"]),
    (
        "daemon",
        &["model", "session", "settings", "metric_families"],
    ),
    ("cli", &["settings"]),
    ("logging", &[]),
];

fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

/// Top-level modules a file names as `crate::NAME` or inside `crate::{...}`.
fn uses(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(body) = rest.strip_prefix('{') {
            // The first path segment of each item at depth 0.
            let mut depth = 0;
            let mut item = String::new();
            for c in body.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        names.insert(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            names.insert(first_segment(&item));
        } else {
            names.insert(first_segment(rest));
        }
    }
    names.retain(|n| !n.is_empty());
    names
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

#[test]
fn every_layer_imports_only_what_it_may() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut checked = 0;
    for file in files {
        let relative = file.strip_prefix(&src).unwrap();
        let layer = relative
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_owned();
        if layer == "main" || layer == "lib" {
            continue; // the edges: they wire everything
        }
        let allowed = ALLOWED
            .iter()
            .find(|(name, _)| *name == layer)
            .unwrap_or_else(|| panic!("{layer} ({}) has no rule in ALLOWED", relative.display()))
            .1;
        let text = std::fs::read_to_string(&file).unwrap();
        for used in uses(&text) {
            assert!(
                used == layer || allowed.contains(&used.as_str()),
                "{} uses crate::{used}, which the {layer} layer may not (docs/ARCHITECTURE.md)",
                relative.display()
            );
        }
        checked += 1;
    }
    assert!(checked > 30, "only {checked} files checked");
}

#[test]
fn the_parser_sees_nested_imports() {
    let text = "use crate::{\n    host::{procfs, users},\n    model::Report,\n};\nlet x = crate::ui::format::rate(1.0);";
    let names: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(names, ["host", "model", "ui"]);
}

/// The sibling modules a file of `folder` names: `super::NAME` (and the
/// first segments inside `super::{...}`) and `crate::FOLDER::NAME`, for the
/// names that are modules of that folder. Test modules (after `#[cfg(test)]`)
/// are left out: they may use anything.
fn sibling_uses(text: &str, folder: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut names = BTreeSet::new();
    for prefix in ["super::".to_owned(), format!("crate::{folder}::")] {
        let mut rest = text;
        while let Some(at) = rest.find(&prefix) {
            rest = &rest[at + prefix.len()..];
            let found: BTreeSet<String> = if rest.starts_with('{') {
                uses(&format!("crate::{rest}"))
            } else {
                [first_segment(rest)].into_iter().collect()
            };
            names.extend(found.into_iter().filter(|n| siblings.contains(n)));
        }
    }
    names
}

/// No module imports one that imports it back, within any folder of the
/// source (the layer rule above covers the folders themselves).
#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut edges: Vec<(String, String)> = Vec::new();
    for file in &files {
        let relative = file.strip_prefix(&src).unwrap();
        let Some(folder) = relative.parent().filter(|p| !p.as_os_str().is_empty()) else {
            continue;
        };
        let name = relative.file_stem().unwrap().to_string_lossy().into_owned();
        if name == "mod" {
            continue; // the folder's index re-exports its modules
        }
        let siblings: BTreeSet<String> = std::fs::read_dir(src.join(folder))
            .unwrap()
            .filter_map(|e| {
                let path = e.ok()?.path();
                let stem = path.file_stem()?.to_string_lossy().into_owned();
                (stem != "mod").then_some(stem)
            })
            .collect();
        let folder = folder.to_string_lossy().replace('/', "::");
        let text = std::fs::read_to_string(file).unwrap();
        for used in sibling_uses(&text, &folder, &siblings) {
            if used != name {
                edges.push((format!("{folder}::{name}"), format!("{folder}::{used}")));
            }
        }
    }
    for (from, to) in &edges {
        assert!(
            !edges.contains(&(to.clone(), from.clone())),
            "{from} and {to} import each other"
        );
    }
    assert!(edges.len() > 10, "only {} edges seen", edges.len());
}
