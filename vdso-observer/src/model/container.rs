//! Which container a process runs in, read from its cgroup v2 path: the
//! container runtime's scope or directory names the container, and under
//! `kubepods` the pod UID and QoS class, for both kubelet cgroup drivers
//! (systemd: `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice/…`,
//! cgroupfs: `kubepods/besteffort/pod<uid>/…`).

use serde::{Deserialize, Serialize};

/// What started the container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    Docker,
    Containerd,
    CriO,
    Podman,
    SystemdNspawn,
    /// A 64-hex directory under kubepods, without a runtime prefix (cgroupfs driver).
    Unknown,
}

impl Runtime {
    /// The name metrics and JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::CriO => "cri_o",
            Runtime::Podman => "podman",
            Runtime::SystemdNspawn => "systemd_nspawn",
            Runtime::Unknown => "unknown",
        }
    }
}

/// Kubernetes QoS class of a pod, from its cgroup parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QosClass {
    Guaranteed,
    Burstable,
    BestEffort,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// The runtime's container id (64 hex for docker, containerd, CRI-O and
    /// podman; the machine name for systemd-nspawn).
    pub id: String,
    pub runtime: Runtime,
    /// Under kubepods: the pod's UID (dashes, as the API shows it).
    pub pod_uid: Option<String>,
    pub qos: Option<QosClass>,
    /// What the runtime calls it, read from its files on this node (null
    /// until found: a runtime whose files are not read here, or a container
    /// gone before it was looked up).
    #[serde(flatten)]
    pub names: ContainerNames,
}

/// The names a container runtime gives a container: Kubernetes' pod,
/// namespace and container names under a CRI runtime, the container's own name
/// under podman.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ContainerNames {
    /// The container's name (`app` in its pod; `--name` under podman).
    pub name: Option<String>,
    /// The pod's name, under Kubernetes.
    pub pod: Option<String>,
    /// The pod's namespace, under Kubernetes.
    pub namespace: Option<String>,
}

impl ContainerNames {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.pod.is_none() && self.namespace.is_none()
    }

    /// `namespace/pod`, as kubectl names a pod; None outside Kubernetes.
    pub fn pod_path(&self) -> Option<String> {
        let pod = self.pod.as_deref()?;
        Some(match self.namespace.as_deref() {
            Some(namespace) => format!("{namespace}/{pod}"),
            None => pod.to_owned(),
        })
    }
}

impl Container {
    /// The container of a cgroup v2 path (`/system.slice/docker-<id>.scope`);
    /// None for a path of no container (a user session, a system service).
    ///
    /// Only where a runtime makes its cgroups: directly under its own parent
    /// at the top of the hierarchy (`system.slice`, `machine.slice` and its
    /// podman pod slices, `docker`, `libpod_parent`) or directly under a pod
    /// of a top-level `kubepods`. A user's delegated subtree
    /// (`user.slice/…/user@UID.service/…`) or a delegated service can make
    /// directories of any name: a `docker-<id>.scope` there names nothing.
    pub fn from_cgroup_path(path: &str) -> Option<Container> {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let in_kubepods = matches!(parts.first(), Some(&("kubepods" | "kubepods.slice")));
        let mut pod_uid = None;
        let mut qos = None;
        let mut container = None;
        for (depth, part) in parts.iter().enumerate() {
            if in_kubepods {
                if let Some(uid) = pod_of(part) {
                    pod_uid = Some(uid);
                }
                qos = qos.or(qos_of(part));
            }
            let owned_parent =
                match depth {
                    0 => false,
                    1 => matches!(
                        parts[0],
                        "system.slice" | "machine.slice" | "docker" | "libpod_parent"
                    ),
                    // A podman pod's slice (systemd driver) or directory (cgroupfs).
                    2 => {
                        (parts[0] == "machine.slice" && parts[1].starts_with("machine-libpod_pod_"))
                            || (parts[0] == "libpod_parent" && is_container_id(parts[1]))
                    }
                    _ => false,
                } || (depth > 0 && in_kubepods && pod_of(parts[depth - 1]).is_some());
            if owned_parent && let Some(found) = container_of(part, parts[0], in_kubepods) {
                container = Some(found);
                break;
            }
        }
        let (id, runtime) = container?;
        if in_kubepods && pod_uid.is_some() && qos.is_none() {
            // Guaranteed pods sit directly under kubepods.
            qos = Some(QosClass::Guaranteed);
        }
        Some(Container {
            id,
            runtime,
            pod_uid,
            qos,
            names: ContainerNames::default(),
        })
    }

    /// The id as `docker ps` and `crictl ps` print it: its first 12 characters.
    pub fn short_id(&self) -> &str {
        self.id.get(..12).unwrap_or(&self.id)
    }

    /// Whether an operator's `--container` text names this container: a prefix
    /// of its id (as short as `docker` accepts) or of its pod's UID, or its name.
    pub fn is_named_by(&self, text: &str) -> bool {
        !text.is_empty()
            && (self.id.starts_with(text)
                || self
                    .pod_uid
                    .as_deref()
                    .is_some_and(|uid| uid.starts_with(text))
                || self.names.name.as_deref() == Some(text))
    }

    /// What the CONTAINER column shows: the runtime's name for it, else the
    /// short id.
    pub fn display_name(&self) -> &str {
        self.names
            .name
            .as_deref()
            .unwrap_or_else(|| self.short_id())
    }
}

fn is_container_id(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One path component naming a container, under the top-level `root`.
fn container_of(part: &str, root: &str, in_kubepods: bool) -> Option<(String, Runtime)> {
    let part_id = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in [
        ("docker-", Runtime::Docker),
        ("cri-containerd-", Runtime::Containerd),
        ("crio-", Runtime::CriO),
        ("libpod-", Runtime::Podman),
    ] {
        if let Some(id) = part_id.strip_prefix(prefix)
            && is_container_id(id)
        {
            return Some((id.to_owned(), runtime));
        }
    }
    if let Some(name) = part
        .strip_prefix("systemd-nspawn@")
        .and_then(|p| p.strip_suffix(".service"))
    {
        // A machine name is a host name: anything else (escape bytes for a
        // terminal, say) is no machine systemd would have started.
        let name = name.replace("\\x2d", "-");
        let plain = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        return (root == "machine.slice" && plain).then_some((name, Runtime::SystemdNspawn));
    }
    // cgroupfs drivers: the bare id (docker's /docker/<id>, kubelet's pod<uid>/<id>).
    if is_container_id(part) {
        return Some((
            part.to_owned(),
            if in_kubepods {
                Runtime::Unknown
            } else {
                Runtime::Docker
            },
        ));
    }
    None
}

/// `kubepods-burstable-pod<uid>.slice` (underscores for dashes) or `pod<uid>`.
fn pod_of(part: &str) -> Option<String> {
    let part = part.strip_suffix(".slice").unwrap_or(part);
    let uid = part
        .rsplit_once("-pod")
        .map(|(_, uid)| uid)
        .or_else(|| part.strip_prefix("pod"))?;
    let uid = uid.replace('_', "-");
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')).then_some(uid)
}

fn qos_of(part: &str) -> Option<QosClass> {
    match part.strip_suffix(".slice").unwrap_or(part) {
        "besteffort" | "kubepods-besteffort" => Some(QosClass::BestEffort),
        "burstable" | "kubepods-burstable" => Some(QosClass::Burstable),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9";

    fn parse(path: &str) -> Container {
        Container::from_cgroup_path(path).unwrap_or_else(|| panic!("{path}"))
    }

    #[test]
    fn runtimes_on_their_own() {
        for (path, runtime) in [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Docker),
            (format!("/libpod_parent/libpod-{ID}"), Runtime::Podman),
            (
                format!("/machine.slice/libpod-{ID}.scope/container"),
                Runtime::Podman,
            ),
            (format!("/system.slice/crio-{ID}.scope"), Runtime::CriO),
            (
                format!("/system.slice/cri-containerd-{ID}.scope"),
                Runtime::Containerd,
            ),
        ] {
            let container = parse(&path);
            assert_eq!(
                (container.id.as_str(), container.runtime),
                (ID, runtime),
                "{path}"
            );
            assert_eq!((&container.pod_uid, container.qos), (&None, None));
        }
        let nspawn = parse("/machine.slice/systemd-nspawn@web\\x2d1.service/payload");
        assert_eq!(
            (nspawn.id.as_str(), nspawn.runtime),
            ("web-1", Runtime::SystemdNspawn)
        );
    }

    #[test]
    fn kubepods_with_the_systemd_driver() {
        let uid = UID.replace('-', "_");
        let burstable = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(burstable.pod_uid.as_deref(), Some(UID));
        assert_eq!(burstable.qos, Some(QosClass::Burstable));
        assert_eq!(burstable.runtime, Runtime::Containerd);
        let guaranteed = parse(&format!(
            "/kubepods.slice/kubepods-pod{uid}.slice/crio-{ID}.scope"
        ));
        assert_eq!(guaranteed.qos, Some(QosClass::Guaranteed));
        assert_eq!(guaranteed.pod_uid.as_deref(), Some(UID));
        let besteffort = parse(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid}.slice/docker-{ID}.scope"
        ));
        assert_eq!(besteffort.qos, Some(QosClass::BestEffort));
    }

    #[test]
    fn kubepods_with_the_cgroupfs_driver() {
        let besteffort = parse(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(besteffort.qos, Some(QosClass::BestEffort));
        assert_eq!(besteffort.pod_uid.as_deref(), Some(UID));
        assert_eq!(besteffort.id, ID);
        let guaranteed = parse(&format!("/kubepods/pod{UID}/{ID}"));
        assert_eq!(guaranteed.qos, Some(QosClass::Guaranteed));
    }

    /// Names a tenant can give its own cgroups do not make it a container,
    /// nor another container. (Before, any path component matched.)
    #[test]
    fn a_user_cannot_frame_a_container() {
        for path in [
            format!("/user.slice/user-1000.slice/user@1000.service/app.slice/docker-{ID}.scope"),
            format!("/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/{ID}"),
            format!("/system.slice/ci-runner.service/docker-{ID}.scope"),
            format!("/system.slice/ci-runner.service/kubepods.slice/cri-containerd-{ID}.scope"),
            "/user.slice/machine.slice/systemd-nspawn@web.service".to_owned(),
            "/machine.slice/systemd-nspawn@evil\x1b[2J.service".to_owned(),
            format!("/{ID}"),
            format!("/vo-collide/libpod-{ID}"),
        ] {
            assert_eq!(Container::from_cgroup_path(&path), None, "{path}");
        }
        // What runtimes make stays a container: podman pods, nested cgroups.
        let pod = format!("/machine.slice/machine-libpod_pod_{ID}.slice/libpod-{ID}.scope");
        assert_eq!(parse(&pod).runtime, Runtime::Podman);
        assert_eq!(parse(&format!("/docker/{ID}/sub")).id, ID);
    }

    #[test]
    fn no_container() {
        for path in [
            "/",
            "/user.slice/user-0.slice/session-3.scope",
            "/system.slice/ssh.service",
            "/docker/not-an-id",
            "/kubepods.slice/kubepods-burstable.slice",
        ] {
            assert_eq!(Container::from_cgroup_path(path), None, "{path}");
        }
    }
}
