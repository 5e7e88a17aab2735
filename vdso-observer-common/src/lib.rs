//! Types shared by the eBPF programs and user space: map keys and values, the
//! loader-provided configuration, and the tables that decide which syscalls are
//! time calls. Everything here is `#[repr(C)]` and `no_std`, so both sides read
//! the same bytes and the same rules. One module per concept, all re-exported
//! here; every enum stored in a map is declared once with [`wire_enum!`].
#![cfg_attr(not(test), no_std)]

mod clocks;
mod config;
mod keys;
mod names;
mod origin;
pub mod proc_stat;
mod syscalls;
mod vdso;

pub use clocks::*;
pub use config::*;
pub use keys::*;
pub use names::*;
pub use origin::*;
pub use syscalls::*;
pub use vdso::*;

/// An enum stored as a number in the maps: its variants with their numbers and
/// names, `ALL`, `COUNT`, `from_repr` and `name`, from one declaration.
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident: $repr:ty {
            $( $(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value, )*
        }

        impl $name {
            /// Every variant, in the order of their numbers.
            pub const ALL: [$name; 0 $(+ { let _ = $value; 1 })*] = [$($name::$variant),*];
            /// How many variants (a map's size when they index it).
            pub const COUNT: usize = Self::ALL.len();

            /// The variant stored as `value`; None for a number no variant has.
            pub const fn from_repr(value: $repr) -> Option<$name> {
                match value {
                    $( $value => Some($name::$variant), )*
                    _ => None,
                }
            }

            /// The one spelling JSON, metric labels and tables share.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )*
                }
            }

            /// The variant spelled `name`; None for a name no variant has.
            pub fn from_name(name: &str) -> Option<$name> {
                Self::ALL.into_iter().find(|v| v.name() == name)
            }
        }
    };
}

// The layouts both sides read: any change is a compile error here first.
const _: () = {
    use core::mem::{align_of, size_of};
    assert!(size_of::<ProcessKey>() == 16);
    assert!(size_of::<CallKey>() == 24 && align_of::<CallKey>() == 8);
    assert!(size_of::<VdsoKey>() == 24);
    assert!(size_of::<RecentTimeCall>() == 32);
    assert!(size_of::<ProcessInfo>() == 104);
    assert!(size_of::<KeySlot>() == 12);
    assert!(size_of::<ProcessExit>() == 120);
    assert!(size_of::<ExactCoverage>() == 16);
    assert!(size_of::<CgroupPath>() == CGROUP_PATH_LEN);
    assert!(size_of::<KernelOffsets>() == 4 * 20);
    assert!(size_of::<SlotRun>() == 8);
    assert!(ObserverStat::COUNT == 12);
};

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are #[repr(C)] plain integers and arrays without padding.
    unsafe impl aya::Pod for super::CallKey {}
    unsafe impl aya::Pod for super::ProcessKey {}
    unsafe impl aya::Pod for super::ProcessInfo {}
    unsafe impl aya::Pod for super::ProcessExit {}
    unsafe impl aya::Pod for super::ProgramConfig {}
    unsafe impl aya::Pod for super::VdsoKey {}
    unsafe impl aya::Pod for super::VdsoFunctionTable {}
    unsafe impl aya::Pod for super::ExactCoverage {}
    unsafe impl aya::Pod for super::CgroupPath {}
    unsafe impl aya::Pod for super::RecentTimeCall {}
    unsafe impl aya::Pod for super::SlotRun {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn x86_64_numbers() {
        assert_eq!(time_call_x86_64(228), Some(TimeCall::ClockGettime));
        assert_eq!(time_call_x86_64(96), Some(TimeCall::Gettimeofday));
        assert_eq!(time_call_x86_64(201), Some(TimeCall::Time));
        assert_eq!(time_call_x86_64(229), Some(TimeCall::ClockGetres));
        assert_eq!(time_call_x86_64(309), Some(TimeCall::Getcpu));
        assert_eq!(time_call_x86_64(318), Some(TimeCall::Getrandom));
        // getppid, read, the i386 clock_gettime64 number: not time calls in this table.
        for nr in [110, 0, 403, 265, -1, i64::MAX] {
            assert_eq!(time_call_x86_64(nr), None, "{nr}");
        }
    }

    #[test]
    fn i386_numbers_including_time64() {
        assert_eq!(time_call_i386(265), Some(TimeCall::ClockGettime));
        assert_eq!(time_call_i386(403), Some(TimeCall::ClockGettime));
        assert_eq!(time_call_i386(78), Some(TimeCall::Gettimeofday));
        assert_eq!(time_call_i386(13), Some(TimeCall::Time));
        assert_eq!(time_call_i386(266), Some(TimeCall::ClockGetres));
        assert_eq!(time_call_i386(406), Some(TimeCall::ClockGetres));
        assert_eq!(time_call_i386(318), Some(TimeCall::Getcpu));
        assert_eq!(time_call_i386(355), Some(TimeCall::Getrandom));
        // 228 is x86_64 clock_gettime, but i386 228 is fsetxattr.
        assert_eq!(time_call_i386(228), None);
    }

    #[test]
    fn the_same_number_means_different_calls_per_abi() {
        // 318: getrandom on x86_64, getcpu on i386.
        assert_eq!(SyscallAbi::X86_64.time_call(318), Some(TimeCall::Getrandom));
        assert_eq!(SyscallAbi::I386.time_call(318), Some(TimeCall::Getcpu));
    }

    #[test]
    fn prefilter_accepts_exactly_the_union() {
        for nr in -5..1000 {
            let expected = time_call_x86_64(nr).is_some() || time_call_i386(nr).is_some();
            assert_eq!(may_be_time_call(nr), expected, "{nr}");
        }
        assert_eq!((0..1000).filter(|&nr| may_be_time_call(nr)).count(), 13);
    }

    #[test]
    fn vsyscall_numbers() {
        assert_eq!(time_call_vsyscall(0), Some(TimeCall::Gettimeofday));
        assert_eq!(time_call_vsyscall(1), Some(TimeCall::Time));
        assert_eq!(time_call_vsyscall(2), Some(TimeCall::Getcpu));
        assert_eq!(time_call_vsyscall(3), None);
    }

    #[test]
    fn origin_is_decided_by_the_address_after_the_syscall_instruction() {
        let start = 0x7fff_0000_0000;
        let len = 0x2000;
        assert_eq!(origin_of(0x5555_0000_1234, start, len), Origin::Direct);
        assert_eq!(origin_of(start + 0x800, start, len), Origin::VdsoFallback);
        // A `syscall` in the last bytes of the vDSO leaves ip at its very end.
        assert_eq!(origin_of(start + len, start, len), Origin::VdsoFallback);
        assert_eq!(origin_of(start + len + 1, start, len), Origin::Direct);
        // ip can never equal start (it points after an instruction).
        assert_eq!(origin_of(start, start, len), Origin::Direct);
        assert_eq!(origin_of(start + 8, 0, 0), Origin::NoVdso);
    }

    #[test]
    fn an_instruction_is_in_the_vdso_from_its_first_byte_to_before_its_end() {
        let (start, len) = (0x7fff_0000, 0x2000);
        assert_eq!(vdso_instruction_offset(start, start, len), Some(0));
        assert_eq!(
            vdso_instruction_offset(start + len - 1, start, len),
            Some(len - 1)
        );
        assert_eq!(vdso_instruction_offset(start + len, start, len), None);
        assert_eq!(vdso_instruction_offset(start - 1, start, len), None);
        assert_eq!(vdso_instruction_offset(8, 0, 0), None);
        // A return address just past the end is still the vDSO's (the other rule).
        assert!(inside_vdso(start + len, start, len));
    }

    #[test]
    fn enums_round_trip_through_their_map_bytes() {
        for call in TimeCall::ALL {
            assert_eq!(TimeCall::from_repr(call as u8), Some(call));
        }
        for origin in Origin::ALL {
            assert_eq!(Origin::from_repr(origin as u8), Some(origin));
        }
        assert_eq!(SyscallAbi::from_repr(1), Some(SyscallAbi::I386));
        assert_eq!(TimeCall::from_repr(6), None);
        assert_eq!(Origin::from_repr(4), None);
    }

    #[test]
    fn vdso_functions_are_found_by_offset() {
        let mut table = VdsoFunctionTable::EMPTY;
        table.count = 2;
        table.start[0] = 0x100;
        table.end[0] = 0x180;
        table.call[0] = TimeCall::ClockGettime as u8;
        table.start[1] = 0x200;
        table.end[1] = 0x210;
        table.call[1] = TimeCall::Time as u8;
        // A stale slot beyond count is ignored.
        table.start[2] = 0;
        table.end[2] = 0x1000;
        assert_eq!(table.call_at(0x100), TimeCall::ClockGettime as u8);
        assert_eq!(table.call_at(0x17f), TimeCall::ClockGettime as u8);
        assert_eq!(table.call_at(0x180), VDSO_OTHER_CODE);
        assert_eq!(table.call_at(0x20f), TimeCall::Time as u8);
        assert_eq!(table.call_at(0x50), VDSO_OTHER_CODE);
    }

    #[test]
    fn uprobe_cookies_round_trip() {
        for cookie in [
            UprobeCookie {
                call: TimeCall::ClockGettime,
                fixed_clock: None,
            },
            UprobeCookie {
                call: TimeCall::ClockGettime,
                fixed_clock: Some(1),
            },
            UprobeCookie {
                call: TimeCall::ClockGetres,
                fixed_clock: Some(0),
            },
            UprobeCookie {
                call: TimeCall::Gettimeofday,
                fixed_clock: Some(-7),
            },
        ] {
            assert_eq!(UprobeCookie::decode(cookie.encode()), Some(cookie));
        }
        assert_eq!(UprobeCookie::decode(0xfe), None);
    }

    #[test]
    fn keys_have_no_padding() {
        assert_eq!(core::mem::size_of::<VdsoKey>(), 24);
        // Keys are hashed as bytes by the kernel: hidden padding would split counters.
        assert_eq!(core::mem::size_of::<ProcessKey>(), 16);
        assert_eq!(core::mem::size_of::<CallKey>(), 24);
        // Written whole from a program's stack: no byte the verifier sees unset.
        assert_eq!(
            core::mem::size_of::<ProcessInfo>(),
            COMM_LEN + 32 + HANDED_KEYS * core::mem::size_of::<KeySlot>() + 8
        );
        assert_eq!(core::mem::size_of::<KeySlot>(), 4 + 4 + 4);
    }

    #[test]
    fn clock_keys_fold_dynamic_and_invalid_ids_by_kind() {
        for id in 0..MAX_STATIC_CLOCK {
            assert_eq!(clock_key(id), id);
        }
        assert_eq!(clock_key(16), CLOCK_INVALID);
        assert_eq!(clock_key(i32::MAX), CLOCK_INVALID);
        // MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED) for many tids: one key.
        for tid in [1, 77, 4_000_000] {
            assert_eq!(clock_key(((!tid) << 3) | 2 | 4), CLOCK_THREAD_CPU);
            assert_eq!(clock_key(((!tid) << 3) | 2), CLOCK_PROCESS_CPU);
            assert_eq!(clock_key((!tid) << 3), CLOCK_PROCESS_CPU); // CPUCLOCK_PROF
            assert_eq!(clock_key(((!tid) << 3) | 3), CLOCK_FD);
            assert_eq!(clock_key(((!tid) << 3) | 7), CLOCK_INVALID);
        }
        // The kinds never collide with NO_CLOCK or with each other.
        let kinds = [
            NO_CLOCK,
            CLOCK_THREAD_CPU,
            CLOCK_PROCESS_CPU,
            CLOCK_FD,
            CLOCK_INVALID,
            CLOCK_OVERFLOW,
        ];
        for (i, a) in kinds.iter().enumerate() {
            assert!(kinds[i + 1..].iter().all(|b| a != b));
        }
    }

    #[test]
    fn call_key_words_are_its_bytes() {
        // Distinct bytes in every field, a negative clock id among them: each
        // word must hold exactly the bytes the key has there, so that words
        // made from the fields equal words a reader of the memory would see.
        let key = CallKey {
            process: ProcessKey {
                tgid: 0x0403_0201,
                exec_id: 0x0807_0605,
                start_boottime_ns: 0x100f_0e0d_0c0b_0a09,
            },
            clock_id: -0x7f6e_5d4d,
            call: 0x15,
            origin: 0x16,
            abi: 0x17,
            _pad: 0x18,
        };
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&key.process.tgid.to_le_bytes());
        bytes.extend_from_slice(&key.process.exec_id.to_le_bytes());
        bytes.extend_from_slice(&key.process.start_boottime_ns.to_le_bytes());
        bytes.extend_from_slice(&key.clock_id.to_le_bytes());
        bytes.extend_from_slice(&[key.call, key.origin, key.abi, key._pad]);
        let words: Vec<u64> = bytes
            .chunks(8)
            .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
            .collect();
        assert_eq!(key.words().to_vec(), words);
        // And on this (little-endian) host, the key's own memory.
        #[cfg(target_endian = "little")]
        {
            // SAFETY: 24 bytes of plain integers without padding.
            let memory: [u64; 3] = unsafe { core::mem::transmute(key) };
            assert_eq!(key.words(), memory);
        }
        // Keys that differ in one field differ in their words.
        let mut other = key;
        other.origin = 0x19;
        assert_ne!(key.words(), other.words());
    }
}

/// The domain enums serialize as their `name()`, the one spelling JSON, metric
/// labels and tables share, and read back from it.
#[cfg(feature = "user")]
mod serialize_by_name {
    extern crate alloc;

    use super::{Origin, Provenance, SyscallAbi, TimeCall};

    macro_rules! by_name {
        ($($type:ty),*) => {$(
            impl serde::Serialize for $type {
                fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                    serializer.serialize_str(self.name())
                }
            }

            impl<'de> serde::Deserialize<'de> for $type {
                fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                    let name = <alloc::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                    <$type>::from_name(&name).ok_or_else(|| {
                        serde::de::Error::invalid_value(
                            serde::de::Unexpected::Str(&name),
                            &concat!("a name of ", stringify!($type)),
                        )
                    })
                }
            }
        )*};
    }

    by_name!(Origin, Provenance, SyscallAbi, TimeCall);
}
