//! Every backend folder has the same file names for the same roles, and its files
//! import each other in one direction only (docs/backends.md, "Adding a backend").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anybroker::BrokerKind;

/// The files every backend folder has, each for the same role.
const EVERY_BACKEND_HAS: [&str; 6] = [
    "mod.rs",
    "config.rs",
    "connection.rs",
    "subscription.rs",
    "channel.rs",
    "broker.rs",
];

/// The sibling modules `source` names through `super::<module>`.
fn siblings_used(source: &str, siblings: &BTreeSet<String>) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (at, _) in source.match_indices("super::") {
        let rest = &source[at + "super::".len()..];
        let word: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if siblings.contains(&word) {
            used.insert(word);
        }
    }
    used
}

/// A cycle in `graph`, as the modules along it, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    graph
        .keys()
        .find_map(|node| visit(node, graph, &mut Vec::new(), &mut done))
}

#[test]
fn backend_folders_share_file_names_and_import_one_way() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("brokers/src");
    for kind in BrokerKind::ALL {
        let folder = root.join(kind.as_str());
        let files: BTreeSet<String> = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".rs"))
            .collect();
        for wanted in EVERY_BACKEND_HAS {
            assert!(
                files.contains(wanted),
                "{kind}: no {wanted} (has {files:?})"
            );
        }
        // mod.rs declares and re-exports the others; they never reach back into it.
        let siblings: BTreeSet<String> = files
            .iter()
            .filter(|f| *f != "mod.rs")
            .map(|f| f.trim_end_matches(".rs").to_string())
            .collect();
        let mut graph = BTreeMap::new();
        for module in &siblings {
            let source = std::fs::read_to_string(folder.join(format!("{module}.rs"))).unwrap();
            // A file's own unit tests (`use super::*`) are part of it, not an import.
            let code = source.split("#[cfg(test)]").next().unwrap_or(&source);
            let from_mod_rs = code.match_indices("super::").any(|(at, _)| {
                let next = code[at + "super::".len()..].chars().next();
                next.is_some_and(|c| c.is_ascii_uppercase() || c == '{')
            });
            assert!(
                !from_mod_rs,
                "{kind}/{module}.rs uses an item of mod.rs; name the file it lives in"
            );
            graph.insert(module.clone(), siblings_used(code, &siblings));
        }
        assert_eq!(
            find_cycle(&graph),
            None,
            "{kind}: files of the backend import each other in a cycle"
        );
    }
}

#[test]
fn a_cycle_is_found() {
    let graph: BTreeMap<String, BTreeSet<String>> = [
        ("broker", &["channel"][..]),
        ("channel", &["subscription"][..]),
        ("subscription", &["channel"][..]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
    .collect();
    assert_eq!(
        find_cycle(&graph),
        Some(vec![
            "channel".to_string(),
            "subscription".to_string(),
            "channel".to_string()
        ])
    );
}
