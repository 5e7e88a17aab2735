//! The 32-bit vDSO image (vdso32), which every i386 process of this boot maps,
//! and a 32-bit process that calls it.
//!
//! The observer is a 64-bit process and has only the 64-bit image, so it runs
//! the smallest possible i386 program (built here, byte by byte: an ELF header,
//! one segment, 70 bytes of code) from a memfd, copies the `[vdso]` of that
//! child through `/proc/PID/mem`, and, when calibrating, tells it which vDSO
//! function to call how often by writing two words into it. Without IA32
//! emulation the exec fails, and then no 32-bit process can exist to need it.

use std::{
    io::{Read as _, Seek as _, SeekFrom, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::vdso_image::{VdsoImage, vdso_range_in_maps};

/// Where the child's one segment is loaded (the traditional i386 base).
const BASE: u32 = 0x0804_8000;
const ELF_HEADER: usize = 52;
const PROGRAM_HEADER: usize = 32;
const CODE_OFFSET: usize = ELF_HEADER + PROGRAM_HEADER;
const MEMFD_NAME: &std::ffi::CStr = c"vdso-observer-vdso32-probe";

/// The child's code. It sleeps 1 ms at a time until the word FUNCTION is set,
/// then calls `FUNCTION(CLOCK_MONOTONIC, &ts)` COUNT times (cdecl) and exits.
/// The two words follow the code; `0xAAAAAAAA`/`0xBBBBBBBB` stand for their
/// addresses until [`program`] fills them in.
#[rustfmt::skip]
const CODE: [u8; 61] = [
    0x68, 0x40, 0x42, 0x0f, 0x00,       // push 1000000       (tv_nsec)
    0x6a, 0x00,                         // push 0             (tv_sec)
    0x89, 0xe5,                         // mov ebp, esp       (&1 ms)
    0x83, 0xec, 0x10,                   // sub esp, 16        (the timespec written)
    // wait:
    0xb8, 0xa2, 0x00, 0x00, 0x00,       // mov eax, 162       (nanosleep)
    0x89, 0xeb,                         // mov ebx, ebp
    0x31, 0xc9,                         // xor ecx, ecx
    0xcd, 0x80,                         // int 0x80
    0x8b, 0x35, 0xaa, 0xaa, 0xaa, 0xaa, // mov esi, [FUNCTION]
    0x85, 0xf6,                         // test esi, esi
    0x74, 0xeb,                         // jz wait
    0x8b, 0x3d, 0xbb, 0xbb, 0xbb, 0xbb, // mov edi, [COUNT]
    0x89, 0xe3,                         // mov ebx, esp
    // call:
    0x53,                               // push ebx
    0x6a, 0x01,                         // push 1             (CLOCK_MONOTONIC)
    0xff, 0xd6,                         // call esi
    0x83, 0xc4, 0x08,                   // add esp, 8
    0x4f,                               // dec edi
    0x75, 0xf5,                         // jnz call
    0xb8, 0x01, 0x00, 0x00, 0x00,       // mov eax, 1         (exit)
    0x31, 0xdb,                         // xor ebx, ebx
    0xcd, 0x80,                         // int 0x80
];
/// Where in CODE the two addresses are.
const FUNCTION_FIELD: usize = 25;
const COUNT_FIELD: usize = 35;

/// Addresses of the two words in the child.
const FUNCTION_WORD: u32 = BASE + (CODE_OFFSET + CODE.len()) as u32;
const COUNT_WORD: u32 = FUNCTION_WORD + 4;

/// The static i386 executable.
pub fn program() -> Vec<u8> {
    let total = (CODE_OFFSET + CODE.len() + 8) as u32;
    let mut elf = Vec::with_capacity(total as usize);
    // e_ident: ELF, 32-bit, little-endian, version 1, System V.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 1, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    elf.extend_from_slice(&3u16.to_le_bytes()); // e_machine: EM_386
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&(BASE + CODE_OFFSET as u32).to_le_bytes()); // e_entry
    elf.extend_from_slice(&(ELF_HEADER as u32).to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(ELF_HEADER as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PROGRAM_HEADER as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&[0; 6]); // no sections
    // PT_LOAD of the whole file, readable and executable (the words are
    // written through /proc/PID/mem, which may write read-only pages).
    for word in [1, 0, BASE, BASE, total, total, 5, 0x1000] {
        elf.extend_from_slice(&u32::to_le_bytes(word));
    }
    let mut code = CODE;
    code[FUNCTION_FIELD..FUNCTION_FIELD + 4].copy_from_slice(&FUNCTION_WORD.to_le_bytes());
    code[COUNT_FIELD..COUNT_FIELD + 4].copy_from_slice(&COUNT_WORD.to_le_bytes());
    elf.extend_from_slice(&code);
    elf.extend_from_slice(&[0; 8]);
    elf
}

/// A running 32-bit child, waiting to be told what to call. Killed on drop.
pub struct Vdso32Child {
    child: Child,
    /// `[start, end)` of its `[vdso]`.
    vdso: (u64, u64),
}

impl Vdso32Child {
    /// Starts the child and waits until it runs the program.
    pub fn start() -> Result<Vdso32Child> {
        let memfd = executable_memfd().context("creating the 32-bit probe executable")?;
        let child = Command::new(format!("/proc/self/fd/{}", memfd.as_raw_fd()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running a 32-bit probe (no IA32 emulation in this kernel?)")?;
        let mut probe = Vdso32Child {
            child,
            vdso: (0, 0),
        };
        probe.vdso = probe.wait_for_exec()?;
        Ok(probe)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its vDSO image.
    pub fn image(&self) -> Result<VdsoImage> {
        let pid = self.pid();
        let (start, end) = self.vdso;
        let mut mem = std::fs::File::open(format!("/proc/{pid}/mem"))
            .with_context(|| format!("opening /proc/{pid}/mem of the 32-bit probe"))?;
        mem.seek(SeekFrom::Start(start))?;
        let mut bytes = vec![0; (end - start) as usize];
        mem.read_exact(&mut bytes)
            .with_context(|| format!("reading the vDSO of the 32-bit probe (pid {pid})"))?;
        VdsoImage::parse(&bytes).with_context(|| format!("the vDSO of 32-bit probe pid {pid}"))
    }

    /// Calls the vDSO function at `offset` `count` times (clock_gettime's
    /// signature) and waits until the child exits; the elapsed time.
    pub fn call(mut self, offset: u64, count: u32) -> Result<Duration> {
        let pid = self.pid();
        let function = u32::try_from(self.vdso.0 + offset)
            .map_err(|_| anyhow!("the 32-bit vDSO of pid {pid} lies above 4 GiB"))?;
        let mut mem = std::fs::OpenOptions::new()
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .with_context(|| format!("opening /proc/{pid}/mem of the 32-bit probe for writing"))?;
        // COUNT first: the child starts as soon as FUNCTION is set.
        mem.seek(SeekFrom::Start(u64::from(COUNT_WORD)))?;
        mem.write_all(&count.max(1).to_le_bytes())?;
        mem.seek(SeekFrom::Start(u64::from(FUNCTION_WORD)))?;
        let start = Instant::now();
        mem.write_all(&function.to_le_bytes())
            .with_context(|| format!("starting the 32-bit probe (pid {pid})"))?;
        let status = self.child.wait()?;
        let elapsed = start.elapsed();
        if !status.success() {
            bail!("the 32-bit probe (pid {pid}) failed: {status}");
        }
        Ok(elapsed)
    }

    /// Waits until the child runs the program (its maps show the memfd and
    /// the vDSO: exec maps the program first and the vDSO after it, so a look
    /// in between sees only the memfd — on a slow guest, often), and returns
    /// its vDSO range.
    fn wait_for_exec(&self) -> Result<(u64, u64)> {
        let pid = self.pid();
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
                .with_context(|| format!("reading /proc/{pid}/maps of the 32-bit probe"))?;
            let running = maps.contains(MEMFD_NAME.to_str().unwrap_or_default());
            if running && let Some(range) = vdso_range_in_maps(&maps) {
                return Ok(range);
            }
            if Instant::now() > deadline {
                if running {
                    bail!("the 32-bit probe (pid {pid}) has no vDSO (vdso32=0?)");
                }
                bail!("the 32-bit probe (pid {pid}) did not start within 2 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Vdso32Child {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The vdso32 image of this boot; an error says why there is none (no IA32
/// emulation, vdso32 disabled, memfds not executable).
pub fn image() -> Result<VdsoImage> {
    if !cfg!(target_arch = "x86_64") {
        bail!("32-bit tasks are not observed on this architecture");
    }
    Vdso32Child::start()?.image()
}

/// The vdso32 image, or None with the reason logged: not a fault, since
/// without IA32 emulation no 32-bit process runs.
pub fn image_if_any() -> Option<VdsoImage> {
    match image() {
        Ok(image) => {
            log::info!(
                "32-bit vDSO read ({} bytes): 32-bit processes' calls are attributed",
                image.len
            );
            Some(image)
        }
        Err(err) => {
            log::info!("32-bit processes' vDSO calls are not followed: {err:#}");
            None
        }
    }
}

fn executable_memfd() -> Result<std::fs::File> {
    const MFD_EXEC: libc::c_uint = 0x10;
    // SAFETY: a NUL-terminated name and flags; the result is checked. No
    // CLOEXEC: the child execs this descriptor through /proc/self/fd.
    let mut fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), MFD_EXEC) };
    if fd < 0 {
        // Kernels before 6.3 do not know MFD_EXEC.
        fd = unsafe { libc::memfd_create(MEMFD_NAME.as_ptr(), 0) };
    }
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh descriptor this function owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(&program()).context("writing the memfd")?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_is_a_well_formed_i386_executable() {
        let elf = program();
        let file = object::File::parse(&*elf).unwrap();
        use object::Object as _;
        assert_eq!(file.architecture(), object::Architecture::I386);
        assert_eq!(file.entry(), u64::from(BASE) + 84);
        assert_eq!(elf.len(), 84 + CODE.len() + 8);
        // The words lie right after the code, where the code reads them.
        let word = |at: usize| u32::from_le_bytes(elf[84 + at..84 + at + 4].try_into().unwrap());
        assert_eq!(word(FUNCTION_FIELD), BASE + 84 + CODE.len() as u32);
        assert_eq!(word(COUNT_FIELD), word(FUNCTION_FIELD) + 4);
        // Both jumps land on their labels: jz at 31 -> wait at 12, jnz at 50 -> call at 41.
        assert_eq!(33 + CODE[32] as i8 as isize, 12);
        assert_eq!(52 + CODE[51] as i8 as isize, 41);
        assert_eq!(CODE[12], 0xb8, "wait: mov eax, 162");
        assert_eq!(CODE[41], 0x53, "call: push ebx");
    }

    /// A real 32-bit process calls the real vdso32 clock_gettime.
    #[test]
    fn the_child_calls_vdso32_clock_gettime() {
        let child = Vdso32Child::start().unwrap();
        let image = child.image().unwrap();
        let gettime = image
            .function(vdso_observer_common::TimeCall::ClockGettime)
            .unwrap();
        let elapsed = child.call(gettime.offset, 100_000).unwrap();
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
    }

    /// The real image of this boot (the machines here have IA32 emulation).
    #[test]
    fn vdso32_is_read_from_a_32_bit_child() {
        let image = image().unwrap();
        assert!(
            image
                .function(vdso_observer_common::TimeCall::ClockGettime)
                .is_some()
        );
        // The syscall entry and both signal trampolines: code where i386
        // processes spend time that is no time call.
        let mut names: Vec<&str> = image.other_exports.iter().map(|e| e.0).collect();
        names.sort();
        assert_eq!(
            names,
            [
                "__kernel_rt_sigreturn",
                "__kernel_sigreturn",
                "__kernel_vsyscall"
            ]
        );
        let table = image.table();
        for &(name, offset, _) in &image.other_exports {
            assert_eq!(
                table.call_at(offset),
                vdso_observer_common::VDSO_NOT_TIME_CODE,
                "{name}"
            );
        }
    }
}
