//! The repository's text refers only to what the repository holds: no specification file kept
//! outside it, no path out of it or into one machine's folders, and every cited page of
//! `docs/` (`docs/method.md#routing`) and every relative Markdown link names a file that exists
//! and, where it gives one, a heading of that file (anchors by GitHub's rule, see [`slug`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// The repository as the checks see it: every file's path (relative to the root) and the
/// text of those that are UTF-8.
struct Repo {
    paths: BTreeSet<PathBuf>,
    texts: BTreeMap<PathBuf, String>,
}

impl Repo {
    fn from_texts(files: &[(&str, &str)]) -> Repo {
        Repo {
            paths: files.iter().map(|(p, _)| PathBuf::from(p)).collect(),
            texts: files
                .iter()
                .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                .collect(),
        }
    }

    /// The files git tracks; outside a git checkout (a source archive), every file under the
    /// root but build outputs and hidden folders other than `.ci`.
    fn load(root: &Path) -> Repo {
        let listed = Command::new("git")
            .args(["ls-files", "-z"])
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success());
        let paths: BTreeSet<PathBuf> = match listed {
            Some(o) => o
                .stdout
                .split(|&b| b == 0)
                .filter(|p| !p.is_empty())
                .map(|p| PathBuf::from(String::from_utf8_lossy(p).into_owned()))
                .collect(),
            None => {
                let mut out = BTreeSet::new();
                walk(root, Path::new(""), &mut out);
                out
            }
        };
        let texts = paths
            .iter()
            .filter_map(|p| {
                let bytes = std::fs::read(root.join(p)).ok()?;
                Some((p.clone(), String::from_utf8(bytes).ok()?))
            })
            .collect();
        Repo { paths, texts }
    }

    /// Whether `p` (normalised, relative) is a file or a folder of the repository.
    fn has(&self, p: &Path) -> bool {
        p.as_os_str().is_empty()
            || self.paths.contains(p)
            || self.paths.iter().any(|f| f.starts_with(p))
    }
}

fn walk(root: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let skip = (name.starts_with('.') && name != ".ci")
            || name.starts_with("target")
            || name == "gpu-dist";
        if skip {
            continue;
        }
        let p = rel.join(&name);
        match e.file_type() {
            Ok(t) if t.is_dir() => walk(root, &p, out),
            Ok(_) => {
                out.insert(p);
            }
            Err(_) => {}
        }
    }
}

/// Texts no file may contain: the names of the specification files that live outside the
/// repository, paths that leave it, and one machine's folders. Built here so that this file
/// does not contain them itself.
fn forbidden() -> Vec<String> {
    let mut out: Vec<String> = ["DELO", "VILT", "CMML", "ENGINE"]
        .iter()
        .map(|n| format!("{n}.md"))
        .collect();
    out.push(format!("../{}", "shared"));
    for folder in ["root", "work"] {
        out.push(format!("/{folder}/"));
    }
    out
}

/// GitHub's anchor of a heading: lower case; letters, digits, `-` and `_` kept, each space
/// a `-`, everything else dropped.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// Lines of a Markdown text outside fenced code blocks, with their 1-based numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("```") || t.starts_with("~~~") {
            fenced = !fenced;
        } else if !fenced {
            out.push((i + 1, line));
        }
    }
    out
}

/// The anchors of a Markdown text's headings; a repeated anchor gets `-1`, `-2`, … as on
/// GitHub.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        let rest = &line[hashes..];
        if !(1..=6).contains(&hashes) || !rest.starts_with(' ') {
            continue;
        }
        let base = slug(rest.trim_end().trim_end_matches('#'));
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(match *n {
            0 => base.clone(),
            k => format!("{base}-{k}"),
        });
        *n += 1;
    }
    out
}

/// `base/target` with `.` and `..` resolved; `None` when it leaves the repository.
fn resolve(base: &Path, target: &str) -> Option<PathBuf> {
    let mut parts: Vec<String> = Vec::new();
    for c in base.join(target).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.iter().collect())
}

/// The problem with a reference to `target` (a path relative to `base`, maybe with
/// `#anchor`), if any.
fn check_target(repo: &Repo, base: &Path, target: &str) -> Option<String> {
    let (path, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(a)),
        None => (target, None),
    };
    let Some(file) = resolve(base, path) else {
        return Some(format!("`{target}` points outside the repository"));
    };
    if !repo.has(&file) {
        return Some(format!("`{target}`: no file {}", file.display()));
    }
    let anchor = anchor?;
    let is_md = file.extension().is_some_and(|e| e == "md");
    let text = repo.texts.get(&file).filter(|_| is_md)?;
    if anchors(text).contains(anchor) {
        return None;
    }
    Some(format!(
        "`{target}`: {} has no heading with the anchor #{anchor} (its anchors: {})",
        file.display(),
        anchors(text).into_iter().collect::<Vec<_>>().join(", ")
    ))
}

fn path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

fn anchor_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '_' | '-')
}

/// `docs/….md` or `docs/….md#anchor` references in any text, root-relative (a `docs/` that
/// continues a longer path is a relative link, checked as such in Markdown files).
fn doc_citations(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        for (at, _) in line.match_indices("docs/") {
            if line[..at].chars().next_back().is_some_and(path_char) {
                continue;
            }
            let path: String = line[at..].chars().take_while(|&c| path_char(c)).collect();
            let path = path.trim_end_matches('.');
            if !path.ends_with(".md") {
                continue;
            }
            let after = &line[at + path.len()..];
            let target = match after.strip_prefix('#') {
                Some(a) => {
                    let anchor: String = a.chars().take_while(|&c| anchor_char(c)).collect();
                    format!("{path}#{anchor}")
                }
                None => path.to_string(),
            };
            out.push((i + 1, target));
        }
    }
    out
}

/// Targets of the inline links `[text](target)` of a Markdown text that are not URLs.
fn markdown_links(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in prose_lines(text) {
        for (at, _) in line.match_indices("](") {
            let rest = &line[at + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = rest[..end].split_whitespace().next().unwrap_or("");
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            out.push((n, target.to_string()));
        }
    }
    out
}

/// Every problem of the repository's references, one line each (`file:line: what`).
fn problems(repo: &Repo) -> Vec<String> {
    let banned = forbidden();
    let mut out = Vec::new();
    for (file, text) in &repo.texts {
        for (i, line) in text.lines().enumerate() {
            for b in banned.iter().filter(|b| line.contains(b.as_str())) {
                out.push(format!(
                    "{}:{}: refers to `{b}`, which is outside the repository",
                    file.display(),
                    i + 1
                ));
            }
        }
        for (n, target) in doc_citations(text) {
            if let Some(p) = check_target(repo, Path::new(""), &target) {
                out.push(format!("{}:{n}: {p}", file.display()));
            }
        }
        if file.extension().is_some_and(|e| e == "md") {
            let dir = file.parent().unwrap_or(Path::new(""));
            for (n, target) in markdown_links(text) {
                let target = match target.strip_prefix('#') {
                    Some(_) => format!(
                        "{}{target}",
                        file.file_name().unwrap_or_default().to_string_lossy()
                    ),
                    None => target,
                };
                if let Some(p) = check_target(repo, dir, &target) {
                    out.push(format!("{}:{n}: {p}", file.display()));
                }
            }
        }
    }
    out
}

#[test]
fn every_reference_in_the_repository_resolves_inside_it() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let repo = Repo::load(&root);
    assert!(
        repo.texts.contains_key(Path::new("docs/method.md"))
            && repo.texts.contains_key(Path::new("src/lib.rs")),
        "the file list of {} lacks docs/method.md or src/lib.rs",
        root.display()
    );
    let found = problems(&repo);
    assert!(
        found.is_empty(),
        "{} broken or outside reference(s):\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn anchors_follow_githubs_rule() {
    let md = "# DeLo as implemented\n## Cross-modal guidance (eq. 5)\n```\n# not a heading\n```\n\
              ## Routing\n### Routing\n#nospace\n## `code` & Q/A_b\n";
    let want: BTreeSet<String> = [
        "delo-as-implemented",
        "cross-modal-guidance-eq-5",
        "routing",
        "routing-1",
        "code--qa_b",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(anchors(md), want);
}

#[test]
fn broken_and_outside_references_are_found() {
    // Assembled from parts so that this file itself holds none of the broken references.
    let (spec, up, docs) = (
        format!("{}.md", "DELO"),
        format!("../{}/spec", "shared"),
        "docs",
    );
    let lib = format!(
        "// eq. (3), {docs}/method.md#routing.\n// {docs}/method.md#no-such-part\n\
         // {docs}/gone.md\n// see {spec}\n// from {up}\n// {docs}/ is the folder\n"
    );
    let method = "# Method\n## Routing\n[up](../../x.md) [ok](#routing) [bad](#nope) \
                  [file](../src/lib.rs) [web](https://example.org/a#b)\n";
    let repo = Repo::from_texts(&[("src/lib.rs", &lib), ("docs/method.md", method)]);
    let found = problems(&repo);
    let expect = [
        format!("src/lib.rs:2: `{docs}/method.md#no-such-part`"),
        format!("src/lib.rs:3: `{docs}/gone.md`: no file"),
        format!("src/lib.rs:4: refers to `{spec}`"),
        format!("src/lib.rs:5: refers to `../{}`", "shared"),
        format!("{docs}/method.md:3: `../../x.md` points outside"),
        format!("{docs}/method.md:3: `method.md#nope`"),
    ];
    for e in &expect {
        assert!(
            found.iter().any(|f| f.starts_with(e)),
            "expected a problem starting with {e:?}, found:\n{}",
            found.join("\n")
        );
    }
    assert_eq!(found.len(), expect.len(), "found:\n{}", found.join("\n"));
}
