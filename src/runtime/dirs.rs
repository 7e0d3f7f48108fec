//! Where the pid file and the upgrade socket live, and the checks that keep another local
//! user from planting or catching them.
//!
//! Whoever listens on the upgrade socket receives the gateway's listening sockets at the
//! next upgrade, and whoever can write the pid file chooses which process a service
//! manager signals. So both live in a directory only the gateway's user can write: by
//! default a runtime directory (never a shared one such as `/tmp`), created with mode 0700
//! when missing, and the gateway refuses to start when the directory of either path is
//! writable by group or others, or owned by a user other than itself or root.

use std::ffi::OsString;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The directory of the default `pid_file` and `upgrade_sock`, first that applies:
/// 1. `$RUNTIME_DIRECTORY` (set by systemd's `RuntimeDirectory=`; its first entry),
/// 2. `/run/portico` when running as root,
/// 3. `$XDG_RUNTIME_DIR/portico` (the user's own runtime directory),
/// 4. `/tmp/portico-<uid>`, which the start-up check refuses unless it is this user's own
///    and private (another user creating it first can stop the gateway, not hijack it).
pub fn default_runtime_dir() -> PathBuf {
    choose(
        std::env::var_os("RUNTIME_DIRECTORY"),
        std::env::var_os("XDG_RUNTIME_DIR"),
        euid(),
    )
}

fn choose(runtime_directory: Option<OsString>, xdg: Option<OsString>, euid: u32) -> PathBuf {
    let absolute = |v: &OsString| {
        let p = PathBuf::from(v);
        (p.is_absolute()).then_some(p)
    };
    if let Some(dir) = runtime_directory.as_ref().and_then(|v| {
        // systemd separates several directories with colons.
        let first = v
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_string();
        absolute(&OsString::from(first))
    }) {
        return dir;
    }
    if euid == 0 {
        return PathBuf::from("/run/portico");
    }
    if let Some(dir) = xdg.as_ref().and_then(absolute) {
        return dir.join("portico");
    }
    PathBuf::from(format!("/tmp/portico-{euid}"))
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// The uid of a user name, when it exists.
fn uid_of(user: &str) -> Option<u32> {
    let name = std::ffi::CString::new(user).ok()?;
    // SAFETY: `name` is a valid C string; getpwnam returns null or a pointer to a static
    // record, read at once (start-up is single-threaded).
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        None
    } else {
        // SAFETY: not null, so it points to a valid passwd record.
        Some(unsafe { (*entry).pw_uid })
    }
}

/// Makes sure the directories of `paths` exist and only this process's user can write
/// them: creates a missing one with mode 0700 (owned by `user` when running as root with
/// `user` set, so the process that later drops to `user` can still reach it), then
/// refuses a directory that is group- or world-writable or owned by another user.
pub fn prepare(paths: &[&Path], user: Option<&str>) -> Result<(), String> {
    let me = euid();
    let user_uid = match user {
        Some(name) if me == 0 => {
            Some(uid_of(name).ok_or_else(|| format!("server.user: no user named `{name}`"))?)
        }
        _ => None,
    };
    let mut seen: Vec<PathBuf> = Vec::new();
    for path in paths {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if seen.contains(&dir) {
            continue;
        }
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|e| format!("cannot create runtime directory {}: {e}", dir.display()))?;
            if let Some(uid) = user_uid {
                std::os::unix::fs::chown(&dir, Some(uid), None).map_err(|e| {
                    format!(
                        "cannot hand runtime directory {} to server.user: {e}",
                        dir.display()
                    )
                })?;
            }
        }
        check(&dir, me, user_uid)?;
        seen.push(dir);
    }
    Ok(())
}

/// Refuses a directory that others could write, or that another user owns.
fn check(dir: &Path, me: u32, user_uid: Option<u32>) -> Result<(), String> {
    let meta =
        std::fs::metadata(dir).map_err(|e| format!("runtime directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "runtime directory {} is not a directory",
            dir.display()
        ));
    }
    let owner = meta.uid();
    if owner != me && owner != 0 && Some(owner) != user_uid {
        return Err(format!(
            "runtime directory {} is owned by uid {owner}, not by this user (uid {me}) or root: \
             another user could plant or catch the upgrade socket and pid file there; \
             set server.pid_file and server.upgrade_sock to a directory of your own",
            dir.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(format!(
            "runtime directory {} is writable by group or others (mode {mode:04o}): another \
             user could plant or catch the upgrade socket and pid file there; use a private \
             directory (chmod go-w, or set server.pid_file and server.upgrade_sock)",
            dir.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn os(s: &str) -> Option<OsString> {
        Some(OsString::from(s))
    }

    #[test]
    fn the_default_directory_follows_systemd_then_root_then_xdg() {
        assert_eq!(
            choose(os("/run/portico:/run/other"), os("/run/user/1000"), 1000),
            PathBuf::from("/run/portico")
        );
        assert_eq!(choose(os("/run/svc"), None, 0), PathBuf::from("/run/svc"));
        assert_eq!(
            choose(None, os("/run/user/0"), 0),
            PathBuf::from("/run/portico")
        );
        assert_eq!(
            choose(None, os("/run/user/1000"), 1000),
            PathBuf::from("/run/user/1000/portico")
        );
        // Relative values are not trusted.
        assert_eq!(
            choose(os("rel"), os("also-rel"), 1000),
            PathBuf::from("/tmp/portico-1000")
        );
        assert_eq!(choose(None, None, 1000), PathBuf::from("/tmp/portico-1000"));
        assert!(!choose(None, None, 1000).starts_with("/tmp/portico.pid"));
    }

    #[test]
    fn a_missing_directory_is_created_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        let pid = dir.join("portico.pid");
        let sock = dir.join("upgrade.sock");
        prepare(&[&pid, &sock], None).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_shared_directory_is_refused_with_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        for mode in [0o777, 0o1777, 0o770, 0o755 | 0o020] {
            std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).unwrap();
            let err = prepare(&[&tmp.path().join("p.pid")], None).unwrap_err();
            assert!(err.contains(&tmp.path().display().to_string()), "{err}");
            assert!(err.contains("writable by group or others"), "{err}");
        }
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        prepare(&[&tmp.path().join("p.pid")], None).unwrap();
    }

    #[test]
    fn a_directory_of_another_user_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let me = euid();
        let (as_uid, owner) = if me == 0 {
            // Root: hand the directory to someone else.
            std::os::unix::fs::chown(tmp.path(), Some(4242), None).unwrap();
            (0, 4242)
        } else {
            // Not root: look at our own directory as if we were another user.
            (me + 1, me)
        };
        let err = check(tmp.path(), as_uid, None).unwrap_err();
        assert!(err.contains(&format!("owned by uid {owner}")), "{err}");
        assert!(err.contains(&tmp.path().display().to_string()), "{err}");
        // The configured `user` may own it (root started, privileges dropped later).
        check(tmp.path(), as_uid, Some(owner)).unwrap();
    }
}
