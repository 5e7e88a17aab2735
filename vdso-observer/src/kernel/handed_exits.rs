//! Processes the exit program took out of the maps (`PROCESS_EXITS_MAP`): its
//! ring read without a syscall, each process's name and keys (with their
//! slots, still counted in) kept here until the aggregation retires it, so a
//! snapshot that is read and dropped (the first window's, a calibration's)
//! loses none. Retiring one costs no syscall per key: the slots are given
//! back with the drain's others, the entry and keys are already gone.

use aya::maps::{MapData, RingBuf};
use vdso_observer_common::{CallKey, PROCESS_EXITS_MAP, ProcessExit, ProcessInfo, ProcessKey};

use crate::model::KeyMap;

/// The ring, and what was read from it and not yet retired.
pub struct HandedExits {
    ring: RingBuf<MapData>,
    pub handed: Handed,
}

impl HandedExits {
    pub fn new(ring: RingBuf<MapData>) -> HandedExits {
        HandedExits {
            ring,
            handed: Handed::default(),
        }
    }

    /// Takes in what the exit program handed since the last read.
    pub fn read_ring(&mut self) -> &mut Handed {
        let mut malformed = 0;
        while let Some(item) = self.ring.next() {
            match parse(&item) {
                Some(exit) => self.handed.add(&exit),
                None => malformed += 1,
            }
        }
        if malformed > 0 {
            log::warn!("{malformed} records of {PROCESS_EXITS_MAP} had the wrong size: skipped");
        }
        &mut self.handed
    }
}

/// Handed processes not yet retired: their keys' slots and their entries.
#[derive(Default)]
pub struct Handed {
    /// Each handed key's counter slot.
    pub keys: KeyMap<CallKey, u32>,
    /// Each handed process's entry, marked exited.
    pub names: KeyMap<ProcessKey, ProcessInfo>,
    /// Handed processes the map still has an entry of: the exit program
    /// could not delete it, or a program counted for one after its exit
    /// (nothing known does). That entry is deleted when they are retired.
    recreated: std::collections::BTreeSet<ProcessKey>,
}

impl Handed {
    fn add(&mut self, exit: &ProcessExit) {
        self.keys.extend(exit.handed_keys());
        self.names.insert(exit.process, exit.info);
    }

    /// The slots of the retired keys that were handed (forgotten here), and
    /// the retired keys that were not (still in the map).
    pub fn take_keys(&mut self, retired: &[CallKey]) -> (Vec<u32>, Vec<CallKey>) {
        if self.keys.is_empty() {
            return (Vec::new(), retired.to_vec());
        }
        let mut slots = Vec::with_capacity(self.keys.len().min(retired.len()));
        let mut rest = Vec::new();
        for key in retired {
            match self.keys.remove(key) {
                Some(slot) => slots.push(slot),
                None => rest.push(*key),
            }
        }
        self.shrink();
        (slots, rest)
    }

    /// Whether a process of the map's entries was handed: then the handed
    /// entry (ended) is the one to report, and the map's is deleted with it.
    pub fn entry_again(&mut self, process: &ProcessKey) -> bool {
        if self.names.is_empty() || !self.names.contains_key(process) {
            return false;
        }
        self.recreated.insert(*process);
        true
    }

    /// How many of the retired processes were handed (forgotten here), and
    /// those whose entry is still in the map (not handed, or made again).
    pub fn take_processes(&mut self, retired: &[ProcessKey]) -> (u64, Vec<ProcessKey>) {
        if self.names.is_empty() {
            return (0, retired.to_vec());
        }
        let mut handed = 0;
        let mut rest = Vec::new();
        for process in retired {
            match self.names.remove(process) {
                Some(_) => {
                    handed += 1;
                    if self.recreated.remove(process) {
                        rest.push(*process);
                    }
                }
                None => rest.push(*process),
            }
        }
        self.shrink();
        (handed, rest)
    }

    /// Gives back what a burst of exits took (the tables stay as large as
    /// the largest drain otherwise).
    fn shrink(&mut self) {
        if self.names.is_empty() && self.names.capacity() > 1024 {
            self.names = KeyMap::default();
        }
        if self.keys.is_empty() && self.keys.capacity() > 1024 {
            self.keys = KeyMap::default();
        }
    }
}

/// A record as the program wrote it (None: not one of its size).
fn parse(bytes: &[u8]) -> Option<ProcessExit> {
    (bytes.len() >= size_of::<ProcessExit>()).then(|| {
        // SAFETY: at least size_of::<ProcessExit>() bytes, read unaligned; any
        // bytes make a valid ProcessExit (plain integers and arrays).
        unsafe { bytes.as_ptr().cast::<ProcessExit>().read_unaligned() }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdso_observer_common::{HANDED_KEYS, KeySlot};

    fn exit_with(keys: u32) -> ProcessExit {
        let process = ProcessKey {
            tgid: 42,
            exec_id: 1,
            start_boottime_ns: 7,
        };
        let mut info = ProcessInfo::new(*b"churn\0\0\0\0\0\0\0\0\0\0\0", 1000, 9);
        for n in 0..keys {
            let key = CallKey {
                process,
                clock_id: n as i32,
                call: 1,
                origin: 2,
                abi: 0,
                _pad: 0,
            };
            if let Some(place) = info.key_slots.get_mut(n as usize) {
                *place = KeySlot::of(&key, 100 + n);
            }
        }
        info.key_slots_taken = keys;
        ProcessExit { process, info }
    }

    #[test]
    fn a_record_names_its_keys_and_slots() {
        let exit = exit_with(2);
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&exit as *const ProcessExit).cast::<u8>(),
                size_of::<ProcessExit>(),
            )
        };
        let parsed = parse(bytes).expect("a whole record");
        let keys: Vec<_> = parsed.handed_keys().collect();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].0.clock_id, 1);
        assert_eq!(keys[1].0.process, exit.process);
        assert_eq!(keys[1].1, 101);
        assert_eq!(parse(&bytes[..bytes.len() - 1]), None);
    }

    #[test]
    fn retiring_takes_only_what_was_handed() {
        let exit = exit_with(2);
        let mut handed = Handed::default();
        handed.add(&exit);
        let other = ProcessKey {
            tgid: 43,
            ..exit.process
        };
        let keys: Vec<CallKey> = exit.handed_keys().map(|(key, _)| key).collect();
        let mut retired = keys.clone();
        retired.push(CallKey {
            process: other,
            ..keys[0]
        });
        let (slots, rest) = handed.take_keys(&retired);
        assert_eq!(slots, [100, 101]);
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].process, other);
        // An entry made again after the exit goes from the map as well.
        assert!(handed.entry_again(&exit.process));
        assert!(!handed.entry_again(&other));
        let (count, rest) = handed.take_processes(&[exit.process, other]);
        assert_eq!((count, rest), (1, vec![exit.process, other]));
        assert!(handed.keys.is_empty() && handed.names.is_empty());
        // Taken once: a second retirement of the same keys frees nothing.
        assert_eq!(handed.take_keys(&keys).0, Vec::<u32>::new());
    }

    #[test]
    fn a_kept_key_and_places_past_the_entry_are_not_handed() {
        let mut exit = exit_with(HANDED_KEYS as u32);
        exit.info.key_slots[0].kept = 1;
        // More taken than there are places (a race, or a cap): only the places.
        exit.info.key_slots_taken = HANDED_KEYS as u32 + 3;
        let slots: Vec<u32> = exit.handed_keys().map(|(_, slot)| slot).collect();
        assert_eq!(slots, [101, 102, 103]);
    }
}
