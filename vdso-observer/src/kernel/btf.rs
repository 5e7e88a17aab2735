//! The kernel's BTF, read once and in place.
//!
//! A full parse of vmlinux BTF (125 000 types here) into typed values costs
//! 18 MB (aya) to 50 MB (btf-rs) at start, for the dozen struct members the
//! programs read and the few names tp_btf and fentry attach to. This reader
//! keeps the file's bytes and one offset per type id, ~6 MB, and is dropped
//! before anything is attached.

use std::{ops::Range, path::Path};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
/// name_off, info, size_or_type: every type record starts with these.
const RECORD_LEN: usize = 12;

/// The kinds of `btf_type.info` bits 24..29 (`include/uapi/linux/btf.h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Kind {
    Int = 1,
    Ptr = 2,
    Array = 3,
    Struct = 4,
    Union = 5,
    Enum = 6,
    Fwd = 7,
    Typedef = 8,
    Volatile = 9,
    Const = 10,
    Restrict = 11,
    Func = 12,
    FuncProto = 13,
    Var = 14,
    Datasec = 15,
    Float = 16,
    DeclTag = 17,
    TypeTag = 18,
    Enum64 = 19,
}

impl Kind {
    fn from_info(info: u32) -> Result<Kind> {
        use Kind::*;
        const ALL: [Kind; 19] = [
            Int, Ptr, Array, Struct, Union, Enum, Fwd, Typedef, Volatile, Const, Restrict, Func,
            FuncProto, Var, Datasec, Float, DeclTag, TypeTag, Enum64,
        ];
        let kind = (info >> 24) & 0x1f;
        ALL.into_iter()
            .find(|k| *k as u32 == kind)
            .ok_or_else(|| anyhow!("unknown BTF kind {kind}"))
    }

    pub fn name(self) -> &'static str {
        use Kind::*;
        match self {
            Int => "int",
            Ptr => "pointer",
            Array => "array",
            Struct => "struct",
            Union => "union",
            Enum | Enum64 => "enum",
            Fwd => "forward declaration",
            Typedef => "typedef",
            Volatile | Const | Restrict | TypeTag => "qualifier",
            Func => "function",
            FuncProto => "function prototype",
            Var => "variable",
            Datasec => "data section",
            Float => "float",
            DeclTag => "declaration tag",
        }
    }

    /// Bytes that follow the 12-byte record, for `vlen` entries.
    fn trailing_len(self, vlen: usize) -> usize {
        use Kind::*;
        match self {
            Int | Var | DeclTag => 4,
            Array => 12,
            Struct | Union | Datasec | Enum64 => 12 * vlen,
            Enum | FuncProto => 8 * vlen,
            Ptr | Fwd | Typedef | Volatile | Const | Restrict | Func | Float | TypeTag => 0,
        }
    }
}

/// One type of the table.
#[derive(Debug, Clone, Copy)]
pub struct Type<'a> {
    pub id: u32,
    pub kind: Kind,
    pub name: &'a str,
    info: u32,
    /// `size` for ints, structs, unions and enums; the type referred to otherwise.
    size_or_type: u32,
    trailing: &'a [u8],
}

/// A member of a struct or union.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub name: &'a str,
    pub type_id: u32,
    pub bit_offset: u32,
    /// 0: not a bit field.
    pub bitfield_size: u32,
}

impl<'a> Type<'a> {
    fn kind_flag(&self) -> bool {
        self.info >> 31 == 1
    }

    /// The type a typedef, qualifier, pointer, array or variable refers to.
    pub fn referred(&self) -> u32 {
        match self.kind {
            Kind::Array => u32_at(self.trailing, 0),
            _ => self.size_or_type,
        }
    }

    pub fn size(&self) -> u32 {
        self.size_or_type
    }

    pub fn array_len(&self) -> u32 {
        u32_at(self.trailing, 8)
    }

    pub fn int_bytes(&self) -> u32 {
        self.size_or_type
    }
}

pub struct KernelBtf {
    data: Vec<u8>,
    strings: Range<usize>,
    /// Byte offset in `data` of each type id's record; index 0 (void) unused.
    starts: Vec<u32>,
}

impl KernelBtf {
    pub fn read(path: &Path) -> Result<KernelBtf> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        KernelBtf::parse(data).with_context(|| format!("parsing BTF {}", path.display()))
    }

    pub fn parse(data: Vec<u8>) -> Result<KernelBtf> {
        ensure!(data.len() >= HEADER_LEN, "shorter than a BTF header");
        let magic = u16::from_ne_bytes([data[0], data[1]]);
        if magic == MAGIC.swap_bytes() {
            bail!("BTF of the other byte order");
        }
        ensure!(magic == MAGIC, "not BTF (magic {magic:#x})");
        let header_len = u32_at(&data, 4) as usize;
        let section = |offset: usize, len: usize| -> Result<Range<usize>> {
            let start = header_len + u32_at(&data, offset) as usize;
            let end = start + u32_at(&data, len) as usize;
            ensure!(end <= data.len(), "a section runs past the end of the file");
            Ok(start..end)
        };
        let types = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut starts = vec![0u32];
        let mut at = types.start;
        while at < types.end {
            ensure!(at + RECORD_LEN <= types.end, "a type record is cut short");
            let info = u32_at(&data, at + 4);
            let kind = Kind::from_info(info)
                .with_context(|| format!("type {} at byte {at}", starts.len()))?;
            starts.push(at as u32);
            at += RECORD_LEN + kind.trailing_len((info & 0xffff) as usize);
        }
        ensure!(
            at == types.end,
            "the last type record runs past its section"
        );
        Ok(KernelBtf {
            data,
            strings,
            starts,
        })
    }

    /// Type ids run from 1 to `count() - 1` (0 is void).
    pub fn count(&self) -> u32 {
        self.starts.len() as u32
    }

    pub fn get(&self, id: u32) -> Result<Type<'_>> {
        let at = *self
            .starts
            .get(id as usize)
            .filter(|_| id != 0)
            .ok_or_else(|| anyhow!("no BTF type {id}"))? as usize;
        let info = u32_at(&self.data, at + 4);
        let kind = Kind::from_info(info)?;
        let end = at + RECORD_LEN + kind.trailing_len((info & 0xffff) as usize);
        Ok(Type {
            id,
            kind,
            name: self.string(u32_at(&self.data, at)),
            info,
            size_or_type: u32_at(&self.data, at + 8),
            trailing: &self.data[at + RECORD_LEN..end],
        })
    }

    /// The first type of this kind and name.
    pub fn find(&self, kind: Kind, name: &str) -> Option<Type<'_>> {
        (1..self.count())
            .filter_map(|id| self.get(id).ok())
            .find(|ty| ty.kind == kind && ty.name == name)
    }

    pub fn members<'a>(&'a self, ty: &Type<'a>) -> impl Iterator<Item = Member<'a>> + 'a {
        let trailing = match ty.kind {
            Kind::Struct | Kind::Union => ty.trailing,
            _ => &[],
        };
        let kind_flag = ty.kind_flag();
        trailing.chunks_exact(12).map(move |m| {
            let offset = u32_at(m, 8);
            let (bit_offset, bitfield_size) = if kind_flag {
                (offset & 0xff_ffff, offset >> 24)
            } else {
                (offset, 0)
            };
            Member {
                name: self.string(u32_at(m, 0)),
                type_id: u32_at(m, 4),
                bit_offset,
                bitfield_size,
            }
        })
    }

    /// Follows typedefs, qualifiers and type tags to the type they stand for.
    pub fn strip_modifiers(&self, mut id: u32) -> Result<Type<'_>> {
        for _ in 0..32 {
            let ty = self.get(id)?;
            match ty.kind {
                Kind::Typedef | Kind::Volatile | Kind::Const | Kind::Restrict | Kind::TypeTag => {
                    id = ty.referred()
                }
                _ => return Ok(ty),
            }
        }
        bail!("type {id}: chain of typedefs and qualifiers too long")
    }

    /// A copy of the type table that aya can take for attaching: every id up
    /// to the last kept one in place (the kernel is told the id), only the
    /// kept typedefs and functions named, every other record a nameless
    /// pointer. aya finds tp_btf and fentry targets by name; this copy parses
    /// in a fraction of the full table's memory.
    pub fn names_only(&self, keep: &[(Kind, &str)]) -> Result<aya::Btf> {
        let kept = |ty: &Type<'_>| {
            matches!(ty.kind, Kind::Typedef | Kind::Func) && keep.contains(&(ty.kind, ty.name))
        };
        let last = (1..self.count())
            .rev()
            .filter_map(|id| self.get(id).ok())
            .find(kept)
            .map_or(0, |ty| ty.id);
        let mut strings = vec![0u8];
        let mut types = Vec::with_capacity(last as usize * RECORD_LEN);
        for id in 1..=last {
            let ty = self.get(id)?;
            let (name, info, referred) = if kept(&ty) {
                let offset = strings.len() as u32;
                strings.extend_from_slice(ty.name.as_bytes());
                strings.push(0);
                // Kind and (for functions) linkage; the referred type is not read.
                (offset, ty.info, ty.referred())
            } else {
                (0, (Kind::Ptr as u32) << 24, 0)
            };
            for word in [name, info, referred] {
                types.extend_from_slice(&word.to_ne_bytes());
            }
        }
        let mut blob = Vec::with_capacity(HEADER_LEN + types.len() + strings.len());
        blob.extend_from_slice(&MAGIC.to_ne_bytes());
        blob.extend_from_slice(&[1, 0]);
        for word in [
            HEADER_LEN as u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            blob.extend_from_slice(&word.to_ne_bytes());
        }
        blob.extend_from_slice(&types);
        drop(types);
        blob.extend_from_slice(&strings);
        aya::Btf::parse(&blob, aya::Endianness::default())
            .context("aya refused the attach targets' type table")
    }

    fn string(&self, offset: u32) -> &str {
        let start = self.strings.start + offset as usize;
        let bytes = self.data.get(start..self.strings.end).unwrap_or_default();
        let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
        std::str::from_utf8(&bytes[..end]).unwrap_or_default()
    }
}

fn u32_at(data: &[u8], at: usize) -> u32 {
    data.get(at..at + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use aya_obj::btf::BtfKind;

    use super::*;
    use crate::kernel::btf_offsets::VMLINUX_BTF;

    fn vmlinux() -> KernelBtf {
        KernelBtf::read(Path::new(VMLINUX_BTF)).expect("the running kernel's BTF is readable")
    }

    /// `[ID] KIND 'NAME'` from bpftool's raw dump: an independent reader.
    fn bpftool_id(kind: &str, name: &str) -> u32 {
        let dump = Command::new("bpftool")
            .args(["btf", "dump", "file", VMLINUX_BTF, "format", "raw"])
            .output()
            .expect("bpftool is installed by `cargo xtask setup --for-tests`");
        let needle = format!("] {kind} '{name}'");
        String::from_utf8_lossy(&dump.stdout)
            .lines()
            .find(|line| line.contains(&needle))
            .and_then(|line| line.strip_prefix('[')?.split(']').next()?.parse().ok())
            .unwrap_or_else(|| panic!("{kind} {name} in bpftool's dump"))
    }

    #[test]
    fn type_ids_and_counts_match_bpftool() {
        let btf = vmlinux();
        let typedef = btf.find(Kind::Typedef, "btf_trace_sys_enter").unwrap();
        assert_eq!(typedef.id, bpftool_id("TYPEDEF", "btf_trace_sys_enter"));
        let task = btf.find(Kind::Struct, "task_struct").unwrap();
        assert_eq!(task.id, bpftool_id("STRUCT", "task_struct"));
        assert!(btf.members(&task).any(|m| m.name == "comm"));
    }

    #[test]
    fn the_names_only_table_gives_aya_the_kernels_ids() {
        let btf = vmlinux();
        let function = if cfg!(target_arch = "x86_64") {
            "__x64_sys_clock_gettime"
        } else {
            "__arm64_sys_clock_gettime"
        };
        let slim = btf
            .names_only(&[
                (Kind::Typedef, "btf_trace_sys_enter"),
                (Kind::Func, function),
                (Kind::Func, "no_such_function"),
            ])
            .unwrap();
        assert_eq!(
            slim.id_by_type_name_kind("btf_trace_sys_enter", BtfKind::Typedef)
                .unwrap(),
            bpftool_id("TYPEDEF", "btf_trace_sys_enter")
        );
        assert_eq!(
            slim.id_by_type_name_kind(function, BtfKind::Func).unwrap(),
            bpftool_id("FUNC", function)
        );
        // Nothing else carries a name.
        assert!(
            slim.id_by_type_name_kind("task_struct", BtfKind::Struct)
                .is_err()
        );
        assert!(
            slim.id_by_type_name_kind("no_such_function", BtfKind::Func)
                .is_err()
        );
    }

    #[test]
    fn a_file_that_is_not_btf_is_refused_with_why() {
        let err = KernelBtf::parse(b"ELF and then some more bytes".to_vec())
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("not BTF"), "{err:#}");
        let mut cut = std::fs::read(VMLINUX_BTF).unwrap();
        cut.truncate(cut.len() / 2);
        let err = KernelBtf::parse(cut).err().unwrap();
        assert!(format!("{err:#}").contains("past the end"), "{err:#}");
    }
}
