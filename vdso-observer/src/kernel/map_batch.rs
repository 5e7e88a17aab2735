//! Whole-map reads and many-key deletions and updates in a few bpf() calls
//! (BPF_MAP_LOOKUP_BATCH, _DELETE_BATCH, _UPDATE_BATCH; Linux 5.6, below
//! the observer's floor), which aya 0.14 does not offer. Key by key, a drain
//! at 5 000 exits a second made ~14 syscalls per process, most of the
//! daemon's CPU. Every function returns the kernel's error where a map type
//! refuses batches; callers then go key by key. `VDSO_OBSERVER_MAP_BATCH=off`
//! makes every batch fail as such a kernel would: the way around a kernel whose
//! batches misbehave, and how the tests run the key-by-key path here.

use std::{
    io,
    mem::size_of,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{Pod, maps::MapData};
use aya_obj::generated::{bpf_attr, bpf_cmd};

/// Entries asked for per call: a hash bucket never holds more, and a chunk of
/// per-CPU values stays small on a machine with many CPUs.
const CHUNK: usize = 1024;

/// How the values of a map are laid out in a batch.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Values {
    /// One value per key.
    Single,
    /// One value per possible CPU, each padded to 8 bytes.
    PerCpu,
}

impl Values {
    fn copies(self) -> io::Result<usize> {
        match self {
            Values::Single => Ok(1),
            Values::PerCpu => aya::util::nr_cpus().map_err(|(_, err)| err),
        }
    }
}

/// Every entry of a hash map or an array, as (key, values) with one value,
/// or one per CPU.
pub fn lookup_all<K: Pod, V: Pod>(
    map: &MapData,
    layout: Values,
    each: impl FnMut(K, &[V]),
) -> io::Result<()> {
    lookup_first(map, layout, usize::MAX, each)
}

/// The first `most` entries of an array (keys 0 to `most - 1`), as
/// [`lookup_all`]. Not for hash maps: asked for fewer entries than a bucket
/// holds, the kernel refuses (ENOSPC).
pub fn lookup_first<K: Pod, V: Pod>(
    map: &MapData,
    layout: Values,
    most: usize,
    mut each: impl FnMut(K, &[V]),
) -> io::Result<()> {
    if most == 0 {
        return Ok(());
    }
    let mut read = 0usize;
    let copies = layout.copies()?;
    let stride = match layout {
        Values::Single => size_of::<V>(),
        Values::PerCpu => size_of::<V>().next_multiple_of(8),
    };
    // No bigger than asked for: a read of ten statistics needs no chunk.
    let chunk = CHUNK.min(most);
    let mut keys = vec![0u8; chunk * size_of::<K>()];
    let mut values = vec![0u8; chunk * stride * copies];
    // The position to go on from: a bucket number for hash maps, a key for
    // arrays; the kernel writes it, and reads it back the next call.
    let mut position_in = vec![0u8; size_of::<K>().max(8)];
    let mut position_out = position_in.clone();
    let mut first = true;
    let mut per_key: Vec<V> = Vec::with_capacity(copies);
    loop {
        let mut attr = zeroed_attr();
        attr.batch.in_batch = if first {
            0
        } else {
            position_in.as_ptr() as u64
        };
        attr.batch.out_batch = position_out.as_mut_ptr() as u64;
        attr.batch.keys = keys.as_mut_ptr() as u64;
        attr.batch.values = values.as_mut_ptr() as u64;
        let asked = chunk.min(most - read);
        attr.batch.count = asked as u32;
        attr.batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
        let result = bpf(bpf_cmd::BPF_MAP_LOOKUP_BATCH, &mut attr);
        // SAFETY: a plain integer of the attr, the kernel's answer or ours.
        let filled = done_by(&result, asked, unsafe { attr.batch.count });
        read += filled;
        for i in 0..filled {
            // SAFETY: the kernel filled `filled` keys of K's size and their
            // values at `stride` apart; both are plain data (Pod).
            let key =
                unsafe { (keys.as_ptr().add(i * size_of::<K>()) as *const K).read_unaligned() };
            per_key.clear();
            for cpu in 0..copies {
                let at = (i * copies + cpu) * stride;
                per_key.push(unsafe { (values.as_ptr().add(at) as *const V).read_unaligned() });
            }
            each(key, &per_key);
        }
        match result {
            Ok(()) if read >= most => return Ok(()),
            Ok(()) => {}
            // The end of the map: this call's entries were the last.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Err(err) => return Err(err),
        }
        std::mem::swap(&mut position_in, &mut position_out);
        first = false;
    }
}

/// What a batch deletion did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Deleted {
    pub count: usize,
    /// Indices of the keys that were not there (stepped over).
    pub absent: Vec<usize>,
}

/// Deletes `keys`; a key already gone is skipped, and said. Returns what was
/// deleted, or the kernel's error with what was deleted before it and where
/// the keys not yet done begin.
pub fn delete<K: Pod>(map: &MapData, keys: &[K]) -> Result<Deleted, (io::Error, Deleted, usize)> {
    let mut done = 0;
    let mut deleted = Deleted::default();
    while done < keys.len() {
        let rest = &keys[done..];
        let mut attr = zeroed_attr();
        attr.batch.keys = rest.as_ptr() as u64;
        attr.batch.count = rest.len() as u32;
        attr.batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
        let result = bpf(bpf_cmd::BPF_MAP_DELETE_BATCH, &mut attr);
        // SAFETY: a plain integer of the attr, the kernel's answer or ours.
        let processed = done_by(&result, rest.len(), unsafe { attr.batch.count });
        done += processed;
        deleted.count += processed;
        match result {
            Ok(()) => {}
            // Stopped at an absent key: step over it.
            Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                deleted.absent.push(done);
                done += 1;
            }
            Err(err) => return Err((err, deleted, done)),
        }
    }
    Ok(deleted)
}

/// Sets every key of an array to `value` on every CPU (a per-CPU array): the
/// tests' way to fill one (slots given back are no longer zeroed).
#[cfg(test)]
pub fn set_per_cpu<V: Pod>(
    map: &MapData,
    keys: &[u32],
    value: V,
) -> Result<(), (io::Error, usize)> {
    let copies = Values::PerCpu.copies().map_err(|err| (err, 0))?;
    let stride = size_of::<V>().next_multiple_of(8);
    let mut done = 0;
    while done < keys.len() {
        let rest = &keys[done..(done + CHUNK).min(keys.len())];
        let mut values = vec![0u8; rest.len() * copies * stride];
        for slot in 0..rest.len() * copies {
            // SAFETY: within `values`; V is plain data.
            unsafe { (values.as_mut_ptr().add(slot * stride) as *mut V).write_unaligned(value) };
        }
        let mut attr = zeroed_attr();
        attr.batch.keys = rest.as_ptr() as u64;
        attr.batch.values = values.as_ptr() as u64;
        attr.batch.count = rest.len() as u32;
        attr.batch.map_fd = map.fd().as_fd().as_raw_fd() as u32;
        let result = bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr);
        // SAFETY: a plain integer of the attr, the kernel's answer or ours.
        let processed = done_by(&result, rest.len(), unsafe { attr.batch.count });
        if let Err(err) = result {
            return Err((err, done + processed));
        }
        done += rest.len();
    }
    Ok(())
}

/// How many entries a batch call did, of `asked`: the kernel writes the
/// count back as it stops, but a kernel that refuses the command outright
/// leaves the count asked in place, and did nothing. (Taken at its word, that
/// count made a refused deletion look done: nothing was deleted, and the maps
/// filled.)
fn done_by(result: &io::Result<()>, asked: usize, count: u32) -> usize {
    let count = (count as usize).min(asked);
    match result {
        Err(err) if err.raw_os_error() != Some(libc::ENOENT) && count == asked => 0,
        _ => count,
    }
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of plain integers; all zeros is what the
    // kernel expects of every field not set.
    unsafe { std::mem::zeroed() }
}

/// Whether `VDSO_OBSERVER_MAP_BATCH=off` is set (read once).
fn batches_off() -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *OFF.get_or_init(|| std::env::var_os("VDSO_OBSERVER_MAP_BATCH").is_some_and(|v| v == "off"))
}

fn bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<()> {
    if batches_off() {
        // What a kernel without the command answers.
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the bpf syscall with a valid, fully initialised attr of its size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut bpf_attr,
            size_of::<bpf_attr>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd as _, OwnedFd};

    use aya::maps::{HashMap, IterableMap as _, Map};

    use super::*;

    #[test]
    fn a_refused_batch_did_nothing() {
        let refused = Err(io::Error::from_raw_os_error(libc::EINVAL));
        assert_eq!(done_by(&refused, 1024, 1024), 0);
        // Stopped part-way: the kernel's count.
        assert_eq!(done_by(&refused, 1024, 100), 100);
        // The end of a map, or an absent key: the kernel's count.
        let end = Err(io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(done_by(&end, 1024, 1024), 1024);
        assert_eq!(done_by(&end, 1024, 3), 3);
        assert_eq!(done_by(&Ok(()), 1024, 1024), 1024);
        assert_eq!(done_by(&Ok(()), 10, 1024), 10);
    }

    /// A map of its own, made with BPF_MAP_CREATE (needs root, as every test
    /// of the kernel side).
    fn create(map_type: u32, key_size: u32, value_size: u32, max_entries: u32) -> MapData {
        let mut attr = zeroed_attr();
        attr.__bindgen_anon_1.map_type = map_type;
        attr.__bindgen_anon_1.key_size = key_size;
        attr.__bindgen_anon_1.value_size = value_size;
        attr.__bindgen_anon_1.max_entries = max_entries;
        // SAFETY: BPF_MAP_CREATE returns a new fd or fails.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                bpf_cmd::BPF_MAP_CREATE as libc::c_long,
                &mut attr as *mut bpf_attr,
                size_of::<bpf_attr>(),
            )
        };
        assert!(fd >= 0, "BPF_MAP_CREATE: {}", io::Error::last_os_error());
        // SAFETY: a new fd only this owns.
        MapData::from_fd(unsafe { OwnedFd::from_raw_fd(fd as i32) }).unwrap()
    }

    #[test]
    fn a_hash_map_reads_whole_and_deletes_past_absent_keys() {
        const BPF_MAP_TYPE_HASH: u32 = 1;
        let mut map: HashMap<MapData, u64, u64> =
            HashMap::try_from(Map::HashMap(create(BPF_MAP_TYPE_HASH, 8, 8, 5000))).unwrap();
        for key in 0..3000u64 {
            map.insert(key, key * 10, 0).unwrap();
        }
        let mut seen = std::collections::BTreeMap::new();
        lookup_all::<u64, u64>(map.map(), Values::Single, |key, value| {
            assert!(seen.insert(key, value[0]).is_none(), "key {key} twice");
        })
        .unwrap();
        assert_eq!(seen.len(), 3000);
        assert!(seen.iter().all(|(key, value)| *value == key * 10));

        // Every other key, with absent keys among them.
        let doomed: Vec<u64> = (0..3000).step_by(2).chain(10_000..10_010).collect();
        let deleted = delete(map.map(), &doomed).unwrap();
        assert_eq!(deleted.count, 1500);
        assert_eq!(deleted.absent, (1500..1510).collect::<Vec<_>>());
        let mut left = 0;
        lookup_all::<u64, u64>(map.map(), Values::Single, |key, _| {
            assert_eq!(key % 2, 1);
            left += 1;
        })
        .unwrap();
        assert_eq!(left, 1500);
    }

    #[test]
    fn a_per_cpu_array_is_set_and_read_in_batches() {
        const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
        let map = create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, 3000);
        let cpus = Values::PerCpu.copies().unwrap() as u64;
        let keys: Vec<u32> = (100..2100).collect();
        set_per_cpu(&map, &keys, 7u64).unwrap();
        let mut entries = 0;
        lookup_all::<u32, u64>(&map, Values::PerCpu, |slot, per_cpu| {
            entries += 1;
            let expected = if (100..2100).contains(&slot) {
                7 * cpus
            } else {
                0
            };
            assert_eq!(per_cpu.iter().sum::<u64>(), expected, "slot {slot}");
        })
        .unwrap();
        assert_eq!(entries, 3000);
        // The first entries only, across a chunk's end and within one.
        for most in [1, 1024, 1500, 3000, 5000] {
            let mut slots = Vec::new();
            lookup_first::<u32, u64>(&map, Values::PerCpu, most, |slot, _| slots.push(slot))
                .unwrap();
            assert_eq!(slots, (0..most.min(3000) as u32).collect::<Vec<_>>());
        }
        lookup_first::<u32, u64>(&map, Values::PerCpu, 0, |_, _| panic!("none asked")).unwrap();
    }
}
