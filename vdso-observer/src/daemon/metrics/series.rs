//! The series the exporter keeps between windows, and their labels, typed
//! until they are written.

use std::{collections::BTreeMap, time::Instant};

use vdso_observer_common::{Origin, Provenance, TimeCall};

use crate::model::{
    CallCount, Container, ContainerNames, FallbackReason, ProcessReport, Runtime, VdsoFunction,
};

/// `container_id` label of the containers beyond `max_containers`.
pub const OTHER_CONTAINER: &str = "(other)";

/// Labels of the kernel-entry families (besides comm and pid), typed until
/// they are written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct CallLabels {
    pub(super) call: TimeCall,
    /// Empty for calls without a clock.
    pub(super) clock: String,
    pub(super) origin: Origin,
    /// None for getrandom (never judged): `reason="none"`.
    pub(super) reason: Option<FallbackReason>,
}

impl CallLabels {
    pub(super) fn of(call: &CallCount) -> CallLabels {
        CallLabels {
            call: call.call,
            clock: call.clock.clone().unwrap_or_default(),
            origin: call.origin,
            reason: call.reason,
        }
    }

    pub(super) fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            ("call", self.call.name()),
            ("clock", &self.clock),
            ("origin", self.origin.name()),
            ("reason", self.reason.map_or("none", FallbackReason::name)),
        ]
    }
}

/// Labels of the vDSO-answered families (besides comm and pid).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct VdsoLabels {
    pub(super) call: VdsoFunction,
    pub(super) provenance: Provenance,
}

impl VdsoLabels {
    pub(super) fn pairs(&self) -> [(&'static str, &'static str); 2] {
        [
            ("call", self.call.name()),
            ("provenance", self.provenance.name()),
        ]
    }
}

/// Monotonic counts of one series owner (a comm, or a process).
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) kernel: BTreeMap<CallLabels, u64>,
    /// vDSO-answered calls: exact counts and estimates.
    pub(super) vdso: BTreeMap<VdsoLabels, f64>,
    /// CPU seconds spent because calls entered the kernel where the vDSO could
    /// have answered.
    pub(super) excess_seconds: f64,
}

impl Counts {
    /// Adds one window of a process: the one accumulation both families use.
    pub(super) fn add(&mut self, process: &ProcessReport) {
        for call in &process.calls {
            *self.kernel.entry(CallLabels::of(call)).or_default() += call.count;
        }
        for call in &process.vdso_calls {
            let labels = VdsoLabels {
                call: call.call,
                provenance: call.provenance,
            };
            *self.vdso.entry(labels).or_default() += call.calls;
        }
        self.excess_seconds += process.excess_cpu_seconds.unwrap_or(0.0);
    }
}

#[derive(Debug)]
pub(super) struct ProcessSeries {
    pub(super) comm: String,
    pub(super) counts: Counts,
    pub(super) exited_at: Option<Instant>,
}

/// Counts of a comm or a container: kept while they grow.
#[derive(Debug)]
pub(super) struct GroupSeries {
    pub(super) counts: Counts,
    pub(super) last_increase: Instant,
}

impl GroupSeries {
    pub(super) fn new(now: Instant) -> GroupSeries {
        GroupSeries {
            counts: Counts::default(),
            last_increase: now,
        }
    }
}

fn label(name: &Option<String>) -> &str {
    name.as_deref().unwrap_or("")
}

/// Who a container's series belong to: its labels, typed until printed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct ContainerLabels {
    /// The runtime's full id, or `(other)` beyond the cap.
    pub(super) id: String,
    /// Empty outside kubepods (and for `(other)`).
    pub(super) pod_uid: String,
    pub(super) runtime: Option<Runtime>,
    /// Kubernetes' `namespace`, `pod` and `container` labels (the runtime's
    /// name for a podman container); empty until found.
    pub(super) names: ContainerNames,
}

impl ContainerLabels {
    pub(super) fn of(container: &Container) -> ContainerLabels {
        ContainerLabels {
            id: container.id.clone(),
            pod_uid: container.pod_uid.clone().unwrap_or_default(),
            runtime: Some(container.runtime),
            names: container.names.clone(),
        }
    }

    pub(super) fn other() -> ContainerLabels {
        ContainerLabels {
            id: OTHER_CONTAINER.to_owned(),
            pod_uid: String::new(),
            runtime: None,
            names: ContainerNames::default(),
        }
    }

    /// The same container, whatever names it has (found late, or not at all;
    /// with them its runtime may be known too).
    pub(super) fn same_container(&self, other: &ContainerLabels) -> bool {
        (&self.id, &self.pod_uid) == (&other.id, &other.pod_uid)
    }

    pub(super) fn pairs(&self) -> [(&'static str, &str); 6] {
        [
            ("container_id", &self.id),
            ("pod_uid", &self.pod_uid),
            ("runtime", self.runtime.map_or("", Runtime::name)),
            ("namespace", label(&self.names.namespace)),
            ("pod", label(&self.names.pod)),
            ("container", label(&self.names.name)),
        ]
    }
}
