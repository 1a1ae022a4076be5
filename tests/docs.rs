//! `docs/ARCHITECTURE.md` names only paths that exist. It is the map of the repository, and
//! a map that sends a reader to a moved or never-written file is worse than none.
//!
//! A path is a code span (between backquotes) whose first word contains a `/` or ends in a
//! source extension. It exists when some file or directory of the repository, relative to
//! the root or to any directory below it, is spelled that way: the rows of a module may
//! name `conv.rs` for a file of that module. `<name>` and `*` stand for one path component
//! part (`kernels/<family>.cu`). System paths (`/dev/zero`) and environment variables
//! (`$CUDA_PATH/bin`) are not the repository's; directories the root `.gitignore` lists are
//! outputs of the scripts, named as such.

use std::fs;
use std::path::Path;

const EXTENSIONS: [&str; 10] = ["rs", "cu", "cuh", "h", "cpp", "sh", "py", "md", "svg", "toml"];

/// Every file and directory (with a trailing `/`) below `dir`, relative to the root, except
/// the `.git` directory and the ignored ones.
fn walk(root: &Path, dir: &Path, ignored: &[String], out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let rel = path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/");
        if path.is_dir() {
            if rel == ".git" || ignored.contains(&rel) || path.ends_with("__pycache__") {
                continue;
            }
            out.push(format!("{rel}/"));
            walk(root, &path, ignored, out);
        } else {
            out.push(rel);
        }
    }
}

/// Whether `candidate` is spelled by `pattern`, where `<…>` and `*` match a non-empty part of
/// one component.
fn spells(pattern: &str, candidate: &str) -> bool {
    let wildcard = pattern
        .find('<')
        .map(|i| (i, pattern[i..].find('>').unwrap() + i + 1))
        .or_else(|| pattern.find('*').map(|i| (i, i + 1)));
    match wildcard {
        None => pattern == candidate,
        Some((start, end)) => {
            let (prefix, suffix) = (&pattern[..start], &pattern[end..]);
            candidate.len() > prefix.len() + suffix.len()
                && candidate.starts_with(prefix)
                && candidate.ends_with(suffix)
                && !candidate[prefix.len()..candidate.len() - suffix.len()].contains('/')
        }
    }
}

fn is_path(word: &str) -> bool {
    let extension = word.rsplit_once('.').map(|(stem, ext)| (!stem.is_empty(), ext));
    word.contains('/') || extension.is_some_and(|(stem, ext)| stem && EXTENSIONS.contains(&ext))
}

#[test]
fn architecture_names_only_existing_paths() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ignored: Vec<String> = fs::read_to_string(root.join(".gitignore"))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix('/'))
        .map(|l| l.trim_end_matches('/').to_string())
        .collect();
    let mut entries = Vec::new();
    walk(root, root, &ignored, &mut entries);
    let doc = fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let spans = doc.split('`').skip(1).step_by(2);
    let paths: Vec<&str> = spans.filter_map(|s| s.split_whitespace().next()).filter(|w| is_path(w)).collect();
    assert!(paths.len() > 50, "too few paths found, is the parsing broken? {paths:?}");
    let mut missing: Vec<&str> = paths
        .into_iter()
        .filter(|p| !p.starts_with('/') && !p.starts_with('$'))
        .filter(|p| !ignored.iter().any(|i| p.trim_end_matches('/') == i || p.starts_with(&format!("{i}/"))))
        .filter(|p| {
            !entries.iter().any(|e| {
                std::iter::once(0).chain(e.match_indices('/').map(|(i, _)| i + 1)).any(|i| spells(p, &e[i..]))
            })
        })
        .collect();
    missing.dedup();
    assert!(missing.is_empty(), "docs/ARCHITECTURE.md names paths that do not exist: {missing:?}");
}
