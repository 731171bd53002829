//! What the README and the manual promise about themselves: a README of two screens with
//! the two commands on the first, every variable the examples read documented by name,
//! shell blocks that wait for the services they start and keep off the default ports, and
//! links that lead somewhere.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    let p = root().join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

const MANUAL: &str = "keyrot-core/src/manual";

/// Every chapter of the manual: (file name, text).
fn chapters() -> Vec<(String, String)> {
    let dir = root().join(MANUAL);
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .expect("the manual's directory")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .map(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (name, std::fs::read_to_string(&p).expect("read a chapter"))
        })
        .collect();
    out.sort();
    assert!(out.len() >= 10, "the manual has {} chapters", out.len());
    out
}

#[test]
fn the_readme_is_two_screens_with_the_two_commands_first() {
    let readme = read("README.md");
    assert!(
        readme.len() <= 12 * 1024,
        "README.md is {} bytes, over 12 KiB",
        readme.len()
    );
    let first_screen: String = readme.lines().take(24).collect::<Vec<_>>().join("\n");
    for command in ["cargo run -p quickstart", "cargo test --workspace --all-features"] {
        assert!(
            first_screen.contains(command),
            "the README's first screen lacks `{command}`"
        );
    }
    // CI runs the README's test command itself.
    assert!(
        read(".ci/run").contains("\ncargo test --workspace --all-features\n"),
        ".ci/run does not run the README's test command"
    );
    for needle in [
        "[dependencies]",
        "keyrot-jwks",
        "features = [\"postgres\"]",
        "Minimum Rust version",
        "MIT OR Apache-2.0",
    ] {
        assert!(readme.contains(needle), "the README lacks {needle:?}");
    }
}

/// `KEYROT_*` names in `text` (a trailing `_`, as in a `format!` prefix, is not a name).
fn variables(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("KEYROT_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        if !name.ends_with('_') {
            out.insert(name.to_owned());
        }
        rest = &tail[end..];
    }
    out
}

fn rust_sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n != "tests" && n != "target") {
                rust_sources(&p, out);
            }
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_variable_the_examples_read_is_in_the_manual() {
    let mut files = Vec::new();
    rust_sources(&root().join("examples"), &mut files);
    assert!(files.len() > 10, "found only {} example sources", files.len());
    let mut used = BTreeSet::new();
    for f in &files {
        used.extend(variables(&std::fs::read_to_string(f).expect("read a source")));
    }
    assert!(used.contains("KEYROT_DATABASE_URL"), "the scan found {used:?}");
    let documented = variables(&read(&format!("{MANUAL}/lifecycle.md")));
    let missing: Vec<&String> = used.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "variables the examples read but the manual's lifecycle chapter does not list: {missing:?}"
    );
}

/// The shell blocks of `text`.
fn shell_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("```sh\n") {
        let body = &rest[i + 6..];
        let end = body.find("\n```").unwrap_or(body.len());
        blocks.push(body[..end].to_owned());
        rest = &body[end..];
    }
    blocks
}

/// The port of `KEYROT_LISTEN=HOST:PORT` on `line`.
fn listen_port(line: &str) -> Option<u16> {
    let value = line.split("KEYROT_LISTEN=").nth(1)?;
    let addr = value.split_whitespace().next()?;
    addr.rsplit(':').next()?.parse().ok()
}

/// The services a block starts in the background must listen on a port of their own (not
/// 8080 or 8090, where the quickstart and the resource server listen by default), and the
/// block must wait until each answers before its first request to it.
fn check_block(chapter: &str, block: &str, ports_seen: &mut BTreeSet<u16>) -> Vec<String> {
    let mut problems = Vec::new();
    let lines: Vec<&str> = block.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let trimmed = line.split('#').next().unwrap_or("").trim_end();
        let starts_service = trimmed.ends_with('&') && !trimmed.ends_with("&&") && trimmed.contains("cargo run");
        if !starts_service {
            continue;
        }
        let Some(port) = listen_port(trimmed) else {
            problems.push(format!("{chapter}: `{line}` starts a service without KEYROT_LISTEN"));
            continue;
        };
        if port == 8080 || port == 8090 {
            problems.push(format!("{chapter}: `{line}` uses a default port"));
        }
        if !ports_seen.insert(port) {
            problems.push(format!("{chapter}: port {port} is used by two blocks"));
        }
        let wait = lines[i + 1..]
            .iter()
            .position(|l| l.contains("until curl") && (l.contains(&format!(":{port}/")) || l.contains(":$port/")));
        let first_use = lines[i + 1..]
            .iter()
            .position(|l| !l.contains("until curl") && l.contains(&format!(":{port}/")));
        match (wait, first_use) {
            (None, _) => problems.push(format!("{chapter}: nothing waits for port {port} to answer")),
            (Some(w), Some(u)) if u < w => {
                problems.push(format!("{chapter}: port {port} is used before the wait for it"))
            }
            _ => {}
        }
    }
    problems
}

#[test]
fn shell_blocks_wait_for_their_services_on_ports_of_their_own() {
    let mut ports = BTreeSet::new();
    let mut problems = Vec::new();
    let mut services = 0;
    for (name, text) in chapters() {
        for block in shell_blocks(&text) {
            services += block.lines().filter(|l| l.trim_end().ends_with('&')).count();
            problems.extend(check_block(&name, &block, &mut ports));
        }
    }
    assert!(
        services >= 4,
        "found only {services} services started in the manual's blocks"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_block_that_races_is_caught() {
    // The shape the README used to print: two services, then a request at once.
    let racing = "KEYROT_LISTEN=127.0.0.1:8081 cargo run -p quickstart &\n\
                  curl -s 127.0.0.1:8081/api/me\n";
    assert_eq!(check_block("x", racing, &mut BTreeSet::new()).len(), 1);
    let default_port = "cargo run -p quickstart &\nuntil curl -sf 127.0.0.1:8080/; do sleep 1; done\n";
    assert_eq!(check_block("x", default_port, &mut BTreeSet::new()).len(), 1);
}

/// Relative links (`](path)` and `](path#anchor)`) of `text`, which lives in `dir`.
fn local_links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let tail = &rest[i + 2..];
        let end = tail.find(')').unwrap_or(tail.len());
        let target = &tail[..end];
        if !target.contains("://") && !target.starts_with('#') && !target.contains("::") && !target.is_empty() {
            out.push(target.split('#').next().unwrap_or(target).to_owned());
        }
        rest = &tail[end..];
    }
    out
}

#[test]
fn the_readmes_links_lead_to_files() {
    let readme = read("README.md");
    let links = local_links(&readme);
    assert!(
        links.iter().filter(|l| l.starts_with(MANUAL)).count() >= 10,
        "{links:?}"
    );
    for link in links {
        assert!(
            root().join(&link).exists(),
            "README links to {link}, which does not exist"
        );
    }
}
