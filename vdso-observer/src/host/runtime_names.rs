//! The names a container runtime gives its containers, read from the
//! runtime's own files on this node (no API server, no runtime socket):
//!
//! - containerd under Kubernetes (its CRI plugin): the OCI bundle's
//!   annotations `io.kubernetes.cri.sandbox-name`, `…sandbox-namespace` and
//!   `…container-name`. The bundle is found in the host's mount table (the
//!   one of PID 1): each task's root file system is mounted at
//!   `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/rootfs`, so a
//!   containerd with any state directory is read. (Not through the shim's
//!   working directory: after the capability drop, `/proc/SHIM/cwd` is
//!   refused, the shim holding capabilities the daemon does not.)
//! - CRI-O: the same from `io.kubernetes.pod.name`, `…pod.namespace` and
//!   `io.kubernetes.container.name`, in its bundle under containers/storage's
//!   run root.
//! - podman: the container's name in containers/storage's `containers.json`.
//!
//! Every file is opened as [`open_regular`] opens another user's files and
//! read bounded. Names are cached per container id (bounded); a container
//! not found is looked up again after [`RETRY_AFTER`], and a window runs at
//! most [`LOOKUPS_PER_WINDOW`] lookups.

use std::{
    collections::HashMap,
    fs,
    io::Read as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde_json::Value;

use super::process_files::open_regular;
use crate::model::{Container, ContainerNames, Report, Runtime};

/// containers/storage's run root (CRI-O's bundles) and graph root (podman's).
const STORAGE_ROOTS: [&str; 2] = ["/run/containers/storage", "/var/lib/containers/storage"];
/// Containers whose names are kept.
const CAPACITY: usize = 4096;
/// A container not found (its runtime not read here, or not written yet) is
/// looked up again after this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);
/// Lookups a window may make: hundreds of new containers at once cost a few
/// windows, not one long one.
pub const LOOKUPS_PER_WINDOW: usize = 64;
/// Largest runtime file read: a bundle's config.json is a few KiB,
/// containers.json grows by ~500 bytes a container.
const LARGEST_FILE: u64 = 64 << 20;

struct Entry {
    /// The names and the runtime whose files had them; None: looked up and
    /// not found.
    found: Option<(ContainerNames, Runtime)>,
    looked_up: Instant,
    used: Instant,
}

/// Names by container id, filled from the runtimes' files.
#[derive(Default)]
pub struct RuntimeNames {
    entries: HashMap<String, Entry>,
    /// containers/storage's containers.json, by its modification time.
    storage_names: HashMap<PathBuf, (SystemTime, HashMap<String, String>)>,
}

impl RuntimeNames {
    /// Writes the names of every container of `report` that has them: from
    /// the cache, else looked up in its runtime's files (while one of its
    /// processes still runs: a container gone is no longer in them).
    pub fn name_containers(&mut self, report: &mut Report) {
        let now = Instant::now();
        let mut lookups = 0;
        let mut bundles = None;
        for process in &report.processes {
            let Some(container) = &process.container else {
                continue;
            };
            let due = match self.entries.get_mut(&container.id) {
                Some(entry) => {
                    entry.used = now;
                    entry.found.is_none() && now.duration_since(entry.looked_up) >= RETRY_AFTER
                }
                None => true,
            };
            if due && !process.exited && lookups < LOOKUPS_PER_WINDOW {
                lookups += 1;
                let bundles = bundles.get_or_insert_with(containerd_bundles);
                let found = self.look_up(container, bundles);
                self.insert(container.id.clone(), found, now);
            }
        }
        let containers = report
            .processes
            .iter_mut()
            .filter_map(|p| p.container.as_mut());
        for container in containers {
            let entry = self.entries.get(&container.id);
            if let Some((names, runtime)) = entry.and_then(|e| e.found.as_ref()) {
                container.names = names.clone();
                if container.runtime == Runtime::Unknown {
                    container.runtime = *runtime;
                }
            }
        }
    }

    fn insert(&mut self, id: String, found: Option<(ContainerNames, Runtime)>, now: Instant) {
        if self.entries.len() >= CAPACITY && !self.entries.contains_key(&id) {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(id, _)| id.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(
            id,
            Entry {
                found,
                looked_up: now,
                used: now,
            },
        );
    }

    /// The names of `container` and the runtime whose files gave them;
    /// `containerd`: its task bundles by container id.
    fn look_up(
        &mut self,
        container: &Container,
        containerd: &HashMap<String, PathBuf>,
    ) -> Option<(ContainerNames, Runtime)> {
        let id = &container.id;
        let mut found = containerd
            .get(id)
            .and_then(|bundle| bundle_names(&bundle.join("config.json")))
            .map(|names| (names, Runtime::Containerd));
        if found.is_none() {
            // CRI-O's bundle, or podman's (names there under `podman kube play`).
            found = STORAGE_ROOTS.iter().find_map(|root| {
                let config = Path::new(root)
                    .join("overlay-containers")
                    .join(id)
                    .join("userdata/config.json");
                Some((bundle_names(&config)?, container.runtime))
            });
        }
        let (mut names, runtime) =
            found.unwrap_or_else(|| (ContainerNames::default(), container.runtime));
        if names.name.is_none() {
            names.name = STORAGE_ROOTS.iter().find_map(|root| {
                let path = Path::new(root).join("overlay-containers/containers.json");
                self.storage_name(&path, id)
            });
        }
        if names.is_empty() {
            log::debug!("container {}: no runtime names found", container.short_id());
            return None;
        }
        log::debug!("container {}: {names:?}", container.short_id());
        Some((names, runtime))
    }

    /// The name containers/storage keeps for `id` (podman's `--name`).
    fn storage_name(&mut self, path: &Path, id: &str) -> Option<String> {
        let modified = fs::metadata(path).and_then(|m| m.modified()).ok()?;
        let fresh = self
            .storage_names
            .get(path)
            .is_some_and(|(seen, _)| *seen == modified);
        if !fresh {
            let names = read_json(path)
                .map(|json| storage_names(&json))
                .unwrap_or_default();
            self.storage_names
                .insert(path.to_owned(), (modified, names));
        }
        self.storage_names.get(path)?.1.get(id).cloned()
    }
}

/// containerd's task bundles by container id, from the host's mount table
/// (PID 1's: the observer may run in a mount namespace of its own).
fn containerd_bundles() -> HashMap<String, PathBuf> {
    let table = fs::read_to_string("/proc/1/mountinfo")
        .or_else(|_| fs::read_to_string("/proc/self/mountinfo"))
        .unwrap_or_default();
    task_bundles(&table)
}

/// `<state>/io.containerd.runtime.v2.task/<namespace>/<id>/rootfs` mount
/// points of a mountinfo table: id -> the bundle directory above `rootfs`.
pub fn task_bundles(mountinfo: &str) -> HashMap<String, PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let mount_point = unescape_mount_path(line.split(' ').nth(4)?);
            let bundle = PathBuf::from(mount_point.strip_suffix("/rootfs")?);
            let mut parts = bundle.iter().rev();
            let id = parts.next()?.to_str()?.to_owned();
            let _namespace = parts.next()?;
            (parts.next()? == "io.containerd.runtime.v2.task").then_some((id, bundle))
        })
        .collect()
}

/// Mount points in mountinfo escape space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_json(path: &Path) -> Option<Value> {
    let (file, _) = open_regular(path).ok()?;
    let mut text = Vec::new();
    file.take(LARGEST_FILE).read_to_end(&mut text).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Kubernetes' names in an OCI bundle's annotations (containerd's CRI
/// plugin, CRI-O); None without any.
fn bundle_names(config: &Path) -> Option<ContainerNames> {
    let json = read_json(config)?;
    let names = annotation_names(json.get("annotations")?);
    (!names.is_empty()).then_some(names)
}

/// The names in a bundle's `annotations` object.
pub fn annotation_names(annotations: &Value) -> ContainerNames {
    let first = |keys: &[&str]| {
        keys.iter()
            .find_map(|key| annotations.get(*key)?.as_str())
            .and_then(clean_name)
    };
    ContainerNames {
        name: first(&[
            "io.kubernetes.cri.container-name",
            "io.kubernetes.container.name",
        ]),
        pod: first(&["io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name"]),
        namespace: first(&[
            "io.kubernetes.cri.sandbox-namespace",
            "io.kubernetes.pod.namespace",
        ]),
    }
}

/// id -> first name, from containers/storage's `containers.json`.
pub fn storage_names(json: &Value) -> HashMap<String, String> {
    json.as_array()
        .into_iter()
        .flatten()
        .filter_map(|container| {
            let id = container.get("id")?.as_str()?;
            let name = container.get("names")?.get(0)?.as_str()?;
            Some((id.to_owned(), clean_name(name)?))
        })
        .collect()
}

/// A name as runtimes allow them (Kubernetes: DNS labels and subdomains;
/// podman: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`); anything else is not shown.
fn clean_name(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containerd_and_cri_o_annotations_name_the_pod() {
        let containerd = serde_json::json!({
            "io.kubernetes.cri.container-name": "app",
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-name": "web-7d4",
            "io.kubernetes.cri.sandbox-namespace": "shop",
        });
        let names = annotation_names(&containerd);
        assert_eq!(names.name.as_deref(), Some("app"));
        assert_eq!(names.pod_path().as_deref(), Some("shop/web-7d4"));
        let cri_o = serde_json::json!({
            "io.kubernetes.container.name": "db",
            "io.kubernetes.pod.name": "pg-0",
            "io.kubernetes.pod.namespace": "data",
        });
        assert_eq!(
            annotation_names(&cri_o).pod_path().as_deref(),
            Some("data/pg-0")
        );
        // A pod's sandbox has a pod and no container name; podman's own
        // annotations name nothing.
        let sandbox = serde_json::json!({"io.kubernetes.cri.sandbox-name": "web-7d4"});
        assert_eq!(annotation_names(&sandbox).name, None);
        let podman = serde_json::json!({"io.container.manager": "libpod"});
        assert!(annotation_names(&podman).is_empty());
    }

    #[test]
    fn names_with_odd_bytes_are_not_shown() {
        let hostile = serde_json::json!({
            "io.kubernetes.cri.container-name": "a\u{1b}[2Jb",
            "io.kubernetes.cri.sandbox-name": "x y",
            "io.kubernetes.cri.sandbox-namespace": "ok-ns",
        });
        let names = annotation_names(&hostile);
        assert_eq!((names.name, names.pod), (None, None));
        assert_eq!(names.namespace.as_deref(), Some("ok-ns"));
    }

    #[test]
    fn podman_names_come_from_containers_json() {
        let json = serde_json::json!([
            {"id": "9f43", "names": ["vt-probe-name"], "image": "deac"},
            {"id": "77aa", "names": []},
            {"id": "88bb", "names": ["bad\nname"]},
        ]);
        let names = storage_names(&json);
        assert_eq!(names.get("9f43").map(String::as_str), Some("vt-probe-name"));
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn containerd_task_bundles_come_from_the_mount_table() {
        let table = "\
1 0 8:1 / / rw - ext4 /dev/vda rw
640 29 0:61 / /run/containerd/io.containerd.runtime.v2.task/k8s.io/c2ba52fa/rootfs rw,relatime - overlay overlay rw
641 29 0:62 / /tmp/my\\040state/io.containerd.runtime.v2.task/moby/77aa/rootfs rw - overlay overlay rw
642 29 0:63 / /var/lib/other/c2ba/rootfs rw - overlay overlay rw
";
        let bundles = task_bundles(table);
        assert_eq!(
            bundles.get("c2ba52fa").map(PathBuf::as_path),
            Some(Path::new(
                "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c2ba52fa"
            ))
        );
        assert_eq!(
            bundles.get("77aa").map(PathBuf::as_path),
            Some(Path::new(
                "/tmp/my state/io.containerd.runtime.v2.task/moby/77aa"
            ))
        );
        assert_eq!(bundles.len(), 2);
    }
}
