//! Kernel structure offsets from the running kernel's BTF.
//!
//! Rust eBPF cannot emit CO-RE relocations, so the fields the programs read are
//! looked up here at start and handed over as a global. Members may sit inside
//! anonymous structs and unions (`mm_struct.context` does) and behind typedefs
//! (`mm_context_t`): the search descends through both.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use vdso_observer_common::KernelOffsets;

use super::btf::{KernelBtf, Kind, Type};

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The kernel's BTF (normally [`VMLINUX_BTF`]), or why there is none.
pub fn read_btf(path: &Path) -> Result<KernelBtf> {
    if !path.exists() {
        bail!(
            "{} does not exist: this kernel was built without CONFIG_DEBUG_INFO_BTF, which \
             vdso-observer needs to find kernel structure offsets; use a kernel with BTF \
             (most distribution kernels since 5.4 have it)",
            path.display()
        );
    }
    KernelBtf::read(path)
}

/// The offsets of every field the programs read.
pub fn kernel_offsets_of(btf: &KernelBtf) -> Result<KernelOffsets> {
    let at = |structure: &str, path: &[&str], size: &[usize]| {
        let field = field(btf, structure, path)?;
        if !size.contains(&field.size) {
            bail!(
                "{structure}.{} is {} bytes, expected {size:?}",
                path.join("."),
                field.size
            );
        }
        Ok::<u32, anyhow::Error>(field.offset)
    };
    let common = KernelOffsets {
        task_mm: at("task_struct", &["mm"], &[8])?,
        task_group_leader: at("task_struct", &["group_leader"], &[8])?,
        task_start_boottime: at("task_struct", &["start_boottime"], &[8])?,
        task_self_exec_id: at("task_struct", &["self_exec_id"], &[4, 8])?,
        task_tgid: at("task_struct", &["tgid"], &[4])?,
        task_comm: at("task_struct", &["comm"], &[16])?,
        mm_vdso: at("mm_struct", &["context", "vdso"], &[8])?,
        regs_sp: at("pt_regs", &["sp"], &[8])?,
        cgroup_kn: at("cgroup", &["kn"], &[8])?,
        kernfs_node_id: at("kernfs_node", &["id"], &[8])?,
        cgroup_root: at("cgroup", &["root"], &[8])?,
        cgroup_root_hierarchy_id: at("cgroup_root", &["hierarchy_id"], &[4])?,
        task_signal: at("task_struct", &["signal"], &[8])?,
        signal_live: at("signal_struct", &["live"], &[4])?,
        ..KernelOffsets::ZERO
    };
    arch_offsets(common, at)
}

/// x86: TS_COMPAT in thread_info.status, each mm's vdso_image, and the
/// registers by their x86 names.
#[cfg(not(target_arch = "aarch64"))]
fn arch_offsets(
    common: KernelOffsets,
    at: impl Fn(&str, &[&str], &[usize]) -> Result<u32>,
) -> Result<KernelOffsets> {
    Ok(KernelOffsets {
        task_thread_status: at("task_struct", &["thread_info", "status"], &[4])?,
        mm_vdso_image: at("mm_struct", &["context", "vdso_image"], &[8])?,
        vdso_image_size: at("vdso_image", &["size"], &[8])?,
        regs_ip: at("pt_regs", &["ip"], &[8])?,
        regs_di: at("pt_regs", &["di"], &[8])?,
        regs_bx: at("pt_regs", &["bx"], &[8])?,
        ..common
    })
}

/// arm64: TIF_32BIT in thread_info.flags; the program counter is `pc`, the
/// first argument `regs[0]` (x0). The mm has no image pointer: user space
/// hands over the image's length.
#[cfg(target_arch = "aarch64")]
fn arch_offsets(
    common: KernelOffsets,
    at: impl Fn(&str, &[&str], &[usize]) -> Result<u32>,
) -> Result<KernelOffsets> {
    Ok(KernelOffsets {
        task_thread_status: at("task_struct", &["thread_info", "flags"], &[8])?,
        regs_ip: at("pt_regs", &["pc"], &[8])?,
        // regs[31]: x0 is its first element.
        regs_di: at("pt_regs", &["regs"], &[31 * 8])?,
        ..common
    })
}

/// A member found by [`field`]: byte offset from the outer struct, and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: usize,
}

/// Finds `structure.path[0].path[1]...`, looking through anonymous members and typedefs.
pub fn field(btf: &KernelBtf, structure: &str, path: &[&str]) -> Result<Field> {
    let mut current = btf
        .find(Kind::Struct, structure)
        .ok_or_else(|| anyhow!("struct {structure} not in BTF"))?;
    let mut offset = 0u32;
    let mut size = 0usize;
    for (depth, name) in path.iter().enumerate() {
        let (member_offset, member_type) = find_member(btf, &current, name)?.ok_or_else(|| {
            anyhow!(
                "{structure}.{} not found in this kernel's BTF",
                path[..=depth].join(".")
            )
        })?;
        offset += member_offset;
        size = type_size(btf, &member_type)?;
        if depth + 1 < path.len() {
            if !matches!(member_type.kind, Kind::Struct | Kind::Union) {
                bail!(
                    "{structure}.{} is a {}, not a struct",
                    path[..=depth].join("."),
                    member_type.kind.name()
                );
            }
            current = member_type;
        }
    }
    Ok(Field { offset, size })
}

/// Byte offset and (typedef-resolved) type of member `name`, searching anonymous
/// struct/union members depth-first.
fn find_member<'a>(
    btf: &'a KernelBtf,
    within: &Type<'a>,
    name: &str,
) -> Result<Option<(u32, Type<'a>)>> {
    for member in btf.members(within) {
        if member.bitfield_size != 0 || member.bit_offset % 8 != 0 {
            if member.name == name {
                bail!("{name} is a bit field");
            }
            continue;
        }
        let member_type = btf.strip_modifiers(member.type_id)?;
        if member.name == name {
            return Ok(Some((member.bit_offset / 8, member_type)));
        }
        if member.name.is_empty()
            && matches!(member_type.kind, Kind::Struct | Kind::Union)
            && let Some((inner_offset, ty)) = find_member(btf, &member_type, name)?
        {
            return Ok(Some((member.bit_offset / 8 + inner_offset, ty)));
        }
    }
    Ok(None)
}

fn type_size(btf: &KernelBtf, ty: &Type<'_>) -> Result<usize> {
    Ok(match ty.kind {
        Kind::Int => ty.int_bytes() as usize,
        Kind::Ptr => 8,
        Kind::Struct | Kind::Union | Kind::Enum | Kind::Enum64 => ty.size() as usize,
        Kind::Array => {
            let element = btf.strip_modifiers(ty.referred())?;
            ty.array_len() as usize * type_size(btf, &element)?
        }
        other => bail!("cannot size a {}", other.name()),
    })
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    fn vmlinux() -> KernelBtf {
        KernelBtf::read(Path::new(VMLINUX_BTF)).expect("the running kernel's BTF is readable")
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn running_kernel_offsets_are_found() {
        let offsets = kernel_offsets_of(&vmlinux()).unwrap();
        // x86_64 pt_regs is user ABI (ptrace): these never move.
        assert_eq!(offsets.regs_bx, 5 * 8);
        assert_eq!(offsets.regs_di, 14 * 8);
        assert_eq!(offsets.regs_ip, 16 * 8);
        assert_eq!(offsets.regs_sp, 19 * 8);
        // thread_info is the first member of task_struct (THREAD_INFO_IN_TASK).
        assert!(offsets.task_thread_status < 64, "{offsets:?}");
        // context.vdso_image follows context.vdso.
        assert_eq!(offsets.mm_vdso_image, offsets.mm_vdso + 8);
        assert_eq!(offsets.vdso_image_size, 8);
        for (name, value) in [
            ("task_mm", offsets.task_mm),
            ("task_group_leader", offsets.task_group_leader),
            ("task_start_boottime", offsets.task_start_boottime),
            ("task_comm", offsets.task_comm),
            ("mm_vdso", offsets.mm_vdso),
        ] {
            assert!(value > 0 && value < 16384, "{name} = {value}");
        }
    }

    #[test]
    fn offsets_match_bpftool() {
        // An independent reader of the same BTF: bpftool's raw dump lists
        // `'mm' type_id=N bits_offset=M` under `STRUCT 'task_struct'`.
        let dump = Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
            .expect("bpftool is installed by `cargo xtask setup --for-tests`");
        assert!(dump.status.success());
        let dump = String::from_utf8_lossy(&dump.stdout);
        let bpftool_offset = |structure: &str, member: &str| -> u32 {
            let header = format!("STRUCT '{structure}' size=");
            let start = dump.find(&header).expect("struct in bpftool dump");
            let needle = format!("\t'{member}' type_id=");
            dump[start..]
                .lines()
                .skip(1)
                .take_while(|line| line.starts_with('\t'))
                .find(|line| line.starts_with(&needle))
                .and_then(|line| line.split("bits_offset=").nth(1))
                .and_then(|bits| bits.split_whitespace().next())
                .and_then(|bits| bits.parse::<u32>().ok())
                .map(|bits| bits / 8)
                .expect("member in bpftool dump")
        };
        let btf = vmlinux();
        for (structure, member) in [
            ("task_struct", "mm"),
            ("task_struct", "comm"),
            ("task_struct", "group_leader"),
            ("task_struct", "start_boottime"),
            ("task_struct", "self_exec_id"),
            ("vdso_image", "size"),
        ] {
            assert_eq!(
                field(&btf, structure, &[member]).unwrap().offset,
                bpftool_offset(structure, member),
                "{structure}.{member}"
            );
        }
    }

    #[test]
    fn missing_member_is_named_in_the_error() {
        let err = field(&vmlinux(), "task_struct", &["no_such_member"]).unwrap_err();
        assert!(
            err.to_string().contains("task_struct.no_such_member"),
            "{err}"
        );
    }

    #[test]
    fn missing_btf_file_says_what_to_do() {
        let err = read_btf(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"), "{err}");
    }
}
