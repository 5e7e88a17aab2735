//! Where calls into the vDSO can be counted exactly in one process: uprobes on
//! its libc's or runtime's entry points, breakpoints for the rest, decided from
//! its maps and the symbols of what it maps. Every file is opened through
//! /proc as the process maps it (`process_files::open_regular`) and read lazily.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, anyhow};
use vdso_observer_common::{SyscallAbi, TimeCall, UprobeCookie};

use crate::host::process_files;

/// Where calls into the vDSO can be counted in one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPoints {
    /// The process's ABI: which vDSO image it maps.
    pub abi: SyscallAbi,
    /// (file as seen from here, symbol, cookie)
    pub uprobes: Vec<(PathBuf, String, UprobeCookie)>,
    /// vDSO functions that need a breakpoint.
    pub breakpoints: Vec<TimeCall>,
}

/// Decides the entry points from a process's maps and executable.
pub fn entry_points(pid: u32) -> Result<EntryPoints> {
    let files = process_files::process_files(pid)?;
    let exe = files.exe.clone();
    let exe_symbols = elf_symbols(&exe).unwrap_or_default();
    let abi = if cfg!(target_arch = "x86_64") && process_files::is_32bit_elf(&exe) {
        SyscallAbi::I386
    } else {
        SyscallAbi::NATIVE
    };
    let mut points = choose_entry_points(&files.executable_mappings, &exe, &exe_symbols, |path| {
        files.open_path(path)
    });
    points.abi = abi;
    if abi == SyscallAbi::I386 {
        adapt_to_i386(&mut points);
    }
    // No breakpoint where the image has no function (arm64: time, getcpu).
    points.breakpoints.retain(|&call| abi.vdso_has(call));
    Ok(points)
}

/// 32-bit glibc (2.34+) and musl (1.2+) route both clock_gettime and its
/// 64-bit-time twin through `__clock_gettime64` (and `__clock_getres64`):
/// one probe there counts every call once. Without a libc, vdso32's two
/// clock_gettime functions take two of the four debug registers: getcpu goes.
fn adapt_to_i386(points: &mut EntryPoints) {
    if points.breakpoints.contains(&TimeCall::ClockGettime) {
        points.breakpoints.retain(|call| *call != TimeCall::Getcpu);
    }
    let mut symbols_of: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    for (file, symbol, _) in &mut points.uprobes {
        let time64 = format!("__{symbol}64");
        let symbols = symbols_of
            .entry(file.clone())
            .or_insert_with(|| elf_symbols(file).unwrap_or_default());
        if symbols.contains(&time64) {
            *symbol = time64;
        }
    }
}

/// The rule, apart from reading files (tested without a process).
pub fn choose_entry_points(
    mapped: &[PathBuf],
    exe: &Path,
    exe_symbols: &HashSet<String>,
    in_root: impl Fn(&Path) -> PathBuf,
) -> EntryPoints {
    let from_arg = |call| UprobeCookie {
        call,
        fixed_clock: None,
    };
    let name = |p: &PathBuf| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let glibc = mapped.iter().find(|p| {
        let n = name(p);
        n == "libc.so.6" || (n.starts_with("libc-2.") && n.ends_with(".so"))
    });
    // /lib/ld-musl-x86_64.so.1 is often a link to .../x86_64-linux-musl/libc.so.
    let musl = mapped.iter().find(|p| {
        let n = name(p);
        let path = p.to_string_lossy();
        n.starts_with("ld-musl-")
            || n.starts_with("libc.musl-")
            || path.contains("-linux-musl/")
            || path.contains("/musl/")
    });
    let mut points = EntryPoints {
        abi: SyscallAbi::X86_64,
        uprobes: vec![],
        breakpoints: vec![],
    };
    let go_nanotime = ["runtime.nanotime1", "runtime.nanotime1.abi0"]
        .into_iter()
        .find(|s| exe_symbols.contains(*s));
    if let Some(nanotime) = go_nanotime {
        // Go calls the vDSO from its runtime, with or without libc.
        let fixed = |clock| UprobeCookie {
            call: TimeCall::ClockGettime,
            fixed_clock: Some(clock),
        };
        points.uprobes.push((
            exe.to_path_buf(),
            nanotime.into(),
            fixed(libc::CLOCK_MONOTONIC),
        ));
        let walltime = [
            "runtime.walltime",
            "runtime.walltime1",
            "runtime.walltime.abi0",
        ]
        .into_iter()
        .find(|s| exe_symbols.contains(*s));
        match walltime {
            Some(walltime) => points.uprobes.push((
                exe.to_path_buf(),
                walltime.into(),
                fixed(libc::CLOCK_REALTIME),
            )),
            // Go >= 1.17 on amd64: time.now reads both clocks itself, one vDSO
            // call each; two probes at one place count both.
            None if exe_symbols.contains("time.now") => {
                for clock in [libc::CLOCK_REALTIME, libc::CLOCK_MONOTONIC] {
                    points
                        .uprobes
                        .push((exe.to_path_buf(), "time.now".into(), fixed(clock)));
                }
            }
            None => {}
        }
    } else if let Some(glibc) = glibc {
        let libc = in_root(glibc);
        points.uprobes.push((
            libc.clone(),
            "clock_gettime".into(),
            from_arg(TimeCall::ClockGettime),
        ));
        points
            .uprobes
            .push((libc, "clock_getres".into(), from_arg(TimeCall::ClockGetres)));
        // IFUNCs resolved straight to the vDSO: no libc code runs; getcpu()
        // calls the vDSO itself (sched_getcpu reads rseq, no call at all).
        points.breakpoints = vec![TimeCall::Gettimeofday, TimeCall::Time, TimeCall::Getcpu];
    } else if let Some(musl) = musl {
        // musl's gettimeofday and time call its clock_gettime; its
        // sched_getcpu calls the vDSO's getcpu.
        points.uprobes.push((
            in_root(musl),
            "clock_gettime".into(),
            from_arg(TimeCall::ClockGettime),
        ));
        points.breakpoints = vec![TimeCall::Getcpu];
    } else if exe_symbols.contains("clock_gettime") {
        // A static binary: its own libc inside.
        points.uprobes.push((
            exe.to_path_buf(),
            "clock_gettime".into(),
            from_arg(TimeCall::ClockGettime),
        ));
        points.breakpoints = vec![TimeCall::Gettimeofday, TimeCall::Time, TimeCall::Getcpu];
    } else {
        points.breakpoints = vec![
            TimeCall::ClockGettime,
            TimeCall::Gettimeofday,
            TimeCall::Time,
            TimeCall::Getcpu,
        ];
    }
    points
}

/// Names defined in .symtab and .dynsym of an ELF file (not the imports: a
/// dynamic binary "has" clock_gettime only as an undefined symbol).
fn elf_symbols(path: &Path) -> Result<HashSet<String>> {
    Ok(elf_symbol_offsets(path)?.into_keys().collect())
}

/// Each defined symbol of an ELF file with its file offset (where a uprobe
/// goes). The file is opened as [`process_files::open_regular`] allows and read
/// lazily: only the headers and symbol tables parsing touches.
fn elf_symbol_offsets(path: &Path) -> Result<HashMap<String, u64>> {
    use object::{Object as _, ObjectSection as _, ObjectSymbol as _};

    let (file, _) = process_files::open_regular(path)?;
    let cache = object::ReadCache::new(file);
    let elf = object::File::parse(&cache).with_context(|| format!("parsing {}", path.display()))?;
    let mut offsets = HashMap::new();
    for symbol in elf.symbols().chain(elf.dynamic_symbols()) {
        if !symbol.is_definition() {
            continue;
        }
        let (Ok(name), Some(index)) = (symbol.name(), symbol.section_index()) else {
            continue;
        };
        let Ok(section) = elf.section_by_index(index) else {
            continue;
        };
        let Some((section_offset, _)) = section.file_range() else {
            continue;
        };
        if let Some(offset) = symbol
            .address()
            .checked_sub(section.address())
            .and_then(|within| within.checked_add(section_offset))
        {
            offsets.entry(name.to_owned()).or_insert(offset);
        }
    }
    Ok(offsets)
}

/// The file offset of `symbol` in `path`, for a uprobe (aya would read the
/// whole file to find it).
pub fn symbol_offset(path: &Path, symbol: &str) -> Result<u64> {
    elf_symbol_offsets(path)?
        .remove(symbol)
        .ok_or_else(|| anyhow!("no symbol {symbol} defined in {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbols(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn root(path: &Path) -> PathBuf {
        Path::new("/proc/7/root").join(path.strip_prefix("/").unwrap())
    }

    #[test]
    fn glibc_gets_uprobes_and_breakpoints_for_its_ifuncs() {
        let mapped = vec![
            PathBuf::from("/usr/bin/app"),
            PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6"),
        ];
        let points = choose_entry_points(
            &mapped,
            Path::new("/usr/bin/app"),
            &symbols(&["main"]),
            root,
        );
        assert_eq!(points.uprobes.len(), 2);
        assert_eq!(
            points.uprobes[0].0,
            Path::new("/proc/7/root/usr/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert_eq!(points.uprobes[0].1, "clock_gettime");
        assert_eq!(points.uprobes[0].2.fixed_clock, None);
        assert_eq!(points.uprobes[1].1, "clock_getres");
        assert_eq!(
            points.breakpoints,
            [TimeCall::Gettimeofday, TimeCall::Time, TimeCall::Getcpu]
        );
    }

    #[test]
    fn go_uses_its_runtime_with_fixed_clocks() {
        let mapped = vec![PathBuf::from("/srv/goapp")];
        let points = choose_entry_points(
            &mapped,
            Path::new("/srv/goapp"),
            &symbols(&["runtime.nanotime1", "runtime.walltime"]),
            root,
        );
        assert_eq!(points.uprobes.len(), 2);
        assert_eq!(points.uprobes[0].2.fixed_clock, Some(libc::CLOCK_MONOTONIC));
        assert_eq!(points.uprobes[1].1, "runtime.walltime");
        assert_eq!(points.uprobes[1].2.fixed_clock, Some(libc::CLOCK_REALTIME));
        assert!(points.breakpoints.is_empty());
    }

    #[test]
    fn go_1_17_and_later_read_both_clocks_in_time_now() {
        let exe = Path::new("/srv/go119");
        let points = choose_entry_points(
            &[exe.to_path_buf()],
            exe,
            &symbols(&["runtime.nanotime1.abi0", "time.now"]),
            root,
        );
        let probes: Vec<(&str, Option<i32>)> = points
            .uprobes
            .iter()
            .map(|(_, s, c)| (s.as_str(), c.fixed_clock))
            .collect();
        assert_eq!(
            probes,
            [
                ("runtime.nanotime1.abi0", Some(libc::CLOCK_MONOTONIC)),
                ("time.now", Some(libc::CLOCK_REALTIME)),
                ("time.now", Some(libc::CLOCK_MONOTONIC)),
            ]
        );
    }

    #[test]
    fn static_musl_and_unknown_binaries() {
        let exe = Path::new("/bin/static");
        let points = choose_entry_points(
            &[exe.to_path_buf()],
            exe,
            &symbols(&["clock_gettime"]),
            root,
        );
        assert_eq!(points.uprobes[0].0, exe);
        assert_eq!(
            points.breakpoints,
            [TimeCall::Gettimeofday, TimeCall::Time, TimeCall::Getcpu]
        );

        for musl in [
            "/lib/ld-musl-x86_64.so.1",
            "/usr/lib/x86_64-linux-musl/libc.so",
        ] {
            let points = choose_entry_points(&[PathBuf::from(musl)], exe, &symbols(&[]), root);
            assert_eq!(points.uprobes.len(), 1, "{musl}");
            assert!(points.uprobes[0].0.ends_with(musl.trim_start_matches('/')));
            assert_eq!(points.breakpoints, [TimeCall::Getcpu], "sched_getcpu");
        }

        let mut points = choose_entry_points(&[], exe, &symbols(&[]), root);
        assert!(points.uprobes.is_empty());
        assert_eq!(points.breakpoints.len(), 4, "at most 4 debug registers");
        // vdso32 has two clock_gettime functions: getcpu makes room.
        adapt_to_i386(&mut points);
        assert_eq!(
            points.breakpoints,
            [
                TimeCall::ClockGettime,
                TimeCall::Gettimeofday,
                TimeCall::Time
            ]
        );
    }

    #[test]
    fn i386_glibc_is_probed_at_its_time64_functions() {
        let libc32 = PathBuf::from("/lib32/libc.so.6");
        let mut points = choose_entry_points(
            std::slice::from_ref(&libc32),
            Path::new("/bin/app32"),
            &symbols(&[]),
            |p| p.to_path_buf(),
        );
        adapt_to_i386(&mut points);
        // The real i386 glibc of the test machines (gcc-multilib).
        let probed: Vec<&str> = points.uprobes.iter().map(|(_, s, _)| s.as_str()).collect();
        assert_eq!(probed, ["__clock_gettime64", "__clock_getres64"]);
    }

    #[test]
    fn maps_give_executable_files_once() {
        let maps = "55-56 r--p 0 fe:00 1 /usr/bin/app\n\
                    56-57 r-xp 0 fe:00 1 /usr/bin/app\n\
                    7f-80 r-xp 0 fe:00 2 /usr/lib/libc.so.6\n\
                    81-82 r-xp 0 00:00 0 [vdso]\n\
                    90-91 r-xp 0 fe:00 3                          /tmp/my app (deleted)\n";
        assert_eq!(
            process_files::mapped_files(maps),
            [
                (PathBuf::from("/usr/bin/app"), "56-57".to_owned()),
                (PathBuf::from("/usr/lib/libc.so.6"), "7f-80".to_owned()),
                (PathBuf::from("/tmp/my app (deleted)"), "90-91".to_owned()),
            ]
        );
        assert_eq!(
            process_files::display_path(Path::new("/proc/12/root/usr/lib/libc.so.6")),
            "/usr/lib/libc.so.6"
        );
    }
}
