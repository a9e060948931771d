//! Puts the git commit into `framegate --version` (`FRAMEGATE_COMMIT`), so a
//! bug report names the exact build; "unknown" when built outside a git
//! checkout (a crates.io or tarball build).

use std::process::Command;

fn main() {
    let commit = git(&["rev-parse", "--short", "HEAD"])
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FRAMEGATE_COMMIT={commit}");
    // A new commit moves HEAD (or the branch it points to).
    if let Some(git) = git_dir() {
        println!("cargo:rerun-if-changed={git}/HEAD");
        if let Ok(head) = std::fs::read_to_string(format!("{git}/HEAD")) {
            if let Some(branch) = head.trim().strip_prefix("ref: ") {
                let common = common_dir().unwrap_or_else(|| git.clone());
                // The branch's loose ref, or packed-refs once `git gc` packed
                // it: a path that does not exist would make cargo rerun this
                // script (and rebuild the crate) on every build.
                for path in [
                    format!("{common}/{branch}"),
                    format!("{common}/packed-refs"),
                ] {
                    if std::path::Path::new(&path).exists() {
                        println!("cargo:rerun-if-changed={path}");
                    }
                }
            }
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `.git` here, or the worktree's own git directory.
fn git_dir() -> Option<String> {
    git(&["rev-parse", "--absolute-git-dir"])
}

/// Where branch refs live (the main checkout's `.git` for a worktree).
fn common_dir() -> Option<String> {
    let dir = git(&["rev-parse", "--git-common-dir"])?;
    std::fs::canonicalize(&dir)
        .ok()
        .map(|p| p.display().to_string())
}
