//! From a cgroup v2 id (what `bpf_get_current_cgroup_id` records) to its
//! path: the id is the inode number of the cgroup's directory in the unified
//! hierarchy, so a walk of that hierarchy maps ids to paths. Walked again
//! when an id is not known yet, at most once a second. Cgroups made while the
//! observer runs are also recorded by the kernel as they are made ([`remember`]).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use crate::model::KeyMap;

/// Where the unified hierarchy is mounted: `/sys/fs/cgroup` on cgroup v2
/// hosts, `/sys/fs/cgroup/unified` on hybrid ones.
pub fn unified_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|root| root.join("cgroup.controllers").exists())
}

struct Paths {
    root: Option<PathBuf>,
    /// From the last walk of the hierarchy.
    by_id: KeyMap<u64, String>,
    walked: Option<Instant>,
    /// Recorded by the kernel when each cgroup was made (it may be gone now).
    recorded: KeyMap<u64, String>,
}

/// Recorded paths kept at most: beyond this the oldest window's go.
const RECORDED_AT_MOST: usize = 16_384;

fn paths(guard: &mut Option<Paths>) -> &mut Paths {
    guard.get_or_insert_with(|| Paths {
        root: unified_root(),
        by_id: KeyMap::default(),
        walked: None,
        recorded: KeyMap::default(),
    })
}

/// Paths the kernel recorded as cgroups were made (`cgroup_mkdir`), so a
/// cgroup removed before anyone looked still names its container.
pub fn remember(recorded: Vec<(u64, String)>) {
    if recorded.is_empty() {
        return;
    }
    let mut guard = PATHS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let paths = paths(&mut guard);
    if paths.recorded.len() + recorded.len() > RECORDED_AT_MOST {
        paths.recorded.clear();
    }
    paths.recorded.extend(recorded);
}

static PATHS: Mutex<Option<Paths>> = Mutex::new(None);

/// The cgroup path (`/kubepods.slice/…`) of a cgroup id; None when it is
/// unknown (the cgroup was removed before anyone looked).
pub fn path_of(id: u64) -> Option<String> {
    const WALK_AT_MOST_EVERY: Duration = Duration::from_secs(1);
    if id == 0 {
        return None;
    }
    let mut guard = PATHS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let paths = paths(&mut guard);
    if let Some(path) = paths.by_id.get(&id).or_else(|| paths.recorded.get(&id)) {
        return Some(path.clone());
    }
    let root = paths.root.clone()?;
    if paths
        .walked
        .is_some_and(|at| at.elapsed() < WALK_AT_MOST_EVERY)
    {
        return None;
    }
    paths.by_id.clear();
    walk(&root, &root, &mut paths.by_id, 0);
    paths.walked = Some(Instant::now());
    paths.by_id.get(&id).cloned()
}

fn walk(root: &Path, dir: &Path, by_id: &mut KeyMap<u64, String>, depth: usize) {
    const DEEPEST: usize = 16;
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let relative = dir.strip_prefix(root).unwrap_or(dir);
    by_id.insert(meta.ino(), format!("/{}", relative.display()));
    if depth >= DEEPEST {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), by_id, depth + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's own cgroup, from /proc/self/cgroup's `0::` line, is
    /// found by the id of its directory.
    #[test]
    fn own_cgroup_is_found_by_its_id() {
        let Some(root) = unified_root() else {
            panic!("no cgroup v2 hierarchy mounted (the development machines have one)");
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let path = own
            .lines()
            .find_map(|l| l.strip_prefix("0::"))
            .expect("a 0:: line")
            .to_owned();
        let id = std::fs::metadata(root.join(path.trim_start_matches('/')))
            .unwrap()
            .ino();
        assert_eq!(path_of(id), Some(path));
        assert_eq!(path_of(0), None);
    }
}
