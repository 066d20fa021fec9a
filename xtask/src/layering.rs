//! The layering invariants of ARCHITECTURE.md, checked against `cargo metadata`
//! (what each crate really depends on, transitively, outside dev-dependencies)
//! and against the library sources (only `proxy-bin` reads files, env and the
//! command line).

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// HTTP stacks: HostDB must know nothing of them.
const HTTP_CRATES: &[&str] =
    &["http", "http-body", "http-body-util", "hyper", "hyper-util", "h2", "reqwest", "tower"];

/// (crate, crates it must not depend on, even transitively, and why).
fn rules() -> Vec<(&'static str, Vec<&'static str>, &'static str)> {
    let mut hostdb_bans = HTTP_CRATES.to_vec();
    hostdb_bans.extend(["vigil-session", "vigil-l7check", "vigil-cluster", "vigil-proxy"]);
    vec![
        (
            "vigil-h1",
            vec![
                "vigil-hostdb",
                "vigil-session",
                "vigil-l7check",
                "vigil-cluster",
                "vigil-proxy",
                "hyper",
                "hyper-util",
                "h2",
                "tower",
            ],
            "h1 is the codec at the bottom: no other HTTP stack, nothing of Vigil above it",
        ),
        ("vigil-hostdb", hostdb_bans, "hostdb knows nothing of HTTP, the session pool or its users"),
        (
            "vigil-session",
            vec!["vigil-hostdb", "vigil-l7check", "vigil-cluster", "vigil-proxy"],
            "session knows nothing of health policy",
        ),
        ("vigil-l7check", vec!["vigil-cluster", "vigil-proxy"], "l7check changes health only through hostdb"),
        (
            "vigil-cluster",
            vec!["vigil-session", "vigil-l7check", "vigil-proxy"],
            "cluster shares hostdb state only",
        ),
        ("vigil-benches", vec!["vigil-proxy"], "no library crate depends on the binary"),
    ]
}

/// Library crate folders whose sources must not touch files, env or argv.
const LIBRARY_DIRS: &[&str] = &["h1/src", "hostdb/src", "session/src", "l7check/src", "cluster/src"];
const IO_PATTERNS: &[&str] =
    &["std::env::", "env::var(", "env::args(", "std::fs::", "tokio::fs::", "File::open"];
/// The codec's sources: no sockets and no clock (it is driven, it does not drive).
const CODEC_DIR: &str = "h1/src";
const SOCKET_OR_CLOCK_PATTERNS: &[&str] = &[
    "tokio::net",
    "std::net::Tcp",
    "std::net::Udp",
    "TcpStream",
    "Instant::now",
    "SystemTime",
    "tokio::time",
];

pub(crate) fn check(root: &Path) -> Result<()> {
    let meta: Value = serde_json::from_str(&crate::cargo_output(&["metadata", "--format-version", "1"])?)
        .context("parsing cargo metadata")?;
    let graph = normal_dependency_graph(&meta)?;
    let mut errors = violations(&graph);
    for dir in LIBRARY_DIRS {
        scan_sources(
            &root.join(dir),
            IO_PATTERNS,
            "only proxy-bin reads files, env and the command line",
            &mut errors,
        )?;
    }
    scan_sources(
        &root.join(CODEC_DIR),
        SOCKET_OR_CLOCK_PATTERNS,
        "the HTTP/1.1 codec opens no socket and reads no clock",
        &mut errors,
    )?;
    if !errors.is_empty() {
        bail!("layering violations:\n  {}", errors.join("\n  "));
    }
    println!(
        "layering: {} crate rules, {} library folders and the I/O-free codec hold",
        rules().len(),
        LIBRARY_DIRS.len()
    );
    Ok(())
}

/// Every rule the dependency graph breaks.
fn violations(graph: &HashMap<String, Vec<String>>) -> Vec<String> {
    let mut errors = Vec::new();
    for (krate, banned, why) in rules() {
        let Some(deps) = closure(graph, krate) else {
            errors.push(format!("{krate}: not in the workspace"));
            continue;
        };
        for b in banned {
            if deps.contains(b) {
                errors.push(format!("{krate} depends on {b} (transitively): {why}"));
            }
        }
    }
    // No library crate depends on the binary's package.
    for (name, _) in graph.iter().filter(|(n, _)| n.starts_with("vigil-") && *n != "vigil-proxy") {
        if closure(graph, name).is_some_and(|d| d.contains("vigil-proxy")) {
            errors.push(format!("{name} depends on vigil-proxy: no library crate may"));
        }
    }
    errors.sort();
    errors.dedup();
    errors
}

/// Package name -> names of its direct normal (non-dev, non-build) dependencies.
fn normal_dependency_graph(meta: &Value) -> Result<HashMap<String, Vec<String>>> {
    let names: HashMap<&str, &str> = meta["packages"]
        .as_array()
        .context("metadata.packages")?
        .iter()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let mut graph = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().context("metadata.resolve.nodes")? {
        let Some(name) = node["id"].as_str().and_then(|id| names.get(id)) else { continue };
        let deps = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| d["dep_kinds"].as_array().is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null())))
            .filter_map(|d| d["pkg"].as_str().and_then(|id| names.get(id)).map(|n| n.to_string()))
            .collect();
        graph.insert(name.to_string(), deps);
    }
    Ok(graph)
}

fn closure<'a>(graph: &'a HashMap<String, Vec<String>>, root: &str) -> Option<BTreeSet<&'a str>> {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = graph.get(root)?.iter().map(String::as_str).collect();
    while let Some(n) = stack.pop() {
        if seen.insert(n) {
            stack.extend(graph.get(n).into_iter().flatten().map(String::as_str));
        }
    }
    Some(seen)
}

/// Every line of code (comments aside) under `dir` that contains one of
/// `patterns` is an error, explained by `why`.
fn scan_sources(dir: &Path, patterns: &[&str], why: &str, errors: &mut Vec<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            scan_sources(&path, patterns, why, errors)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path)?;
            for (i, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                if let Some(p) = patterns.iter().find(|p| code.contains(*p)) {
                    errors.push(format!("{}:{}: `{p}`: {why}", path.display(), i + 1));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph(edges: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        edges.iter().map(|(n, d)| (n.to_string(), d.iter().map(|s| s.to_string()).collect())).collect()
    }

    const CLEAN: &[(&str, &[&str])] = &[
        ("vigil-h1", &["http", "tokio"]),
        ("vigil-hostdb", &["tokio"]),
        ("vigil-session", &["hyper", "vigil-h1"]),
        ("vigil-l7check", &["vigil-hostdb", "vigil-session"]),
        ("vigil-cluster", &["vigil-hostdb"]),
        ("vigil-benches", &["vigil-hostdb"]),
        ("vigil-proxy", &["vigil-l7check", "vigil-cluster"]),
        ("hyper", &["http"]),
        ("tokio", &[]),
        ("http", &[]),
    ];

    #[test]
    fn the_intended_layering_passes() {
        assert_eq!(violations(&graph(CLEAN)), Vec::<String>::new());
    }

    #[test]
    fn a_transitive_http_dependency_of_hostdb_is_caught() {
        let mut g = graph(CLEAN);
        g.insert("tokio".into(), vec!["http".into()]);
        let v = violations(&g);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("vigil-hostdb depends on http"), "{v:?}");
    }

    #[test]
    fn the_codec_on_another_http_stack_is_caught() {
        let mut g = graph(CLEAN);
        g.insert("vigil-h1".into(), vec!["hyper".into()]);
        let v = violations(&g);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].starts_with("vigil-h1 depends on hyper"), "{v:?}");
    }

    #[test]
    fn session_on_hostdb_and_a_library_on_the_binary_are_caught() {
        let mut g = graph(CLEAN);
        g.insert("vigil-session".into(), vec!["vigil-hostdb".into()]);
        g.insert("vigil-cluster".into(), vec!["vigil-proxy".into()]);
        let v = violations(&g).join("\n");
        assert!(v.contains("vigil-session depends on vigil-hostdb"), "{v}");
        assert!(v.contains("vigil-cluster depends on vigil-proxy"), "{v}");
    }
}
