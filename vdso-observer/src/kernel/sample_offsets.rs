//! Where in the 64-bit vDSO the sampler's samples land, for the calibration:
//! it watches one child at a time, reads the histogram, and hands the
//! sampler the bitmaps of the bytes only coarse-clock reads run and of those
//! coarse and fine reads both run.

use anyhow::{Context as _, Result};
use aya::maps::IterableMap as _;
use vdso_observer_common::{COARSE_CODE_MAP, SAMPLE_OFFSETS_MAP, SHARED_CODE_MAP, VDSO_CODE_BYTES};

use super::{
    map_batch::{self, Values},
    observer::Observer,
};

impl Observer {
    /// Counts the samples of process `tgid` by vDSO offset from now on (0:
    /// nobody), the histogram emptied first.
    pub fn watch_sample_offsets(&mut self, tgid: u32) -> Result<()> {
        self.take_sample_offsets()?;
        self.maps
            .offset_sampled_tgid
            .set(0, tgid, 0)
            .context("naming the process whose samples are counted by offset")
    }

    /// Stops counting by offset; what was counted stays to be taken.
    pub fn stop_watching_sample_offsets(&mut self) -> Result<()> {
        self.maps
            .offset_sampled_tgid
            .set(0, 0, 0)
            .context("ending the count of samples by offset")
    }

    /// Samples per vDSO offset since the last call (offsets with none left
    /// out), and the histogram emptied.
    pub fn take_sample_offsets(&mut self) -> Result<Vec<(u32, u32)>> {
        let mut seen = Vec::new();
        let map = &mut self.maps.sample_offsets;
        let batched =
            map_batch::lookup_all::<u32, u32>(map.map(), Values::Single, |offset, count| {
                if count[0] > 0 {
                    seen.push((offset, count[0]));
                }
            });
        if batched.is_err() {
            seen = (0..VDSO_CODE_BYTES)
                .filter_map(|offset| Some((offset, map.get(&offset, 0).ok()?)))
                .filter(|(_, count)| *count > 0)
                .collect();
        }
        for &(offset, _) in &seen {
            map.set(offset, 0, 0)
                .with_context(|| format!("emptying {SAMPLE_OFFSETS_MAP}[{offset}]"))?;
        }
        Ok(seen)
    }

    /// Has the sampler key samples at `coarse` offsets as coarse-clock
    /// reads, and at `shared` ones as code coarse and fine reads both run.
    pub fn set_gettime_code(&mut self, coarse: &[u32], shared: &[u32]) -> Result<()> {
        let maps = &mut self.maps;
        for (map, name, offsets) in [
            (&mut maps.coarse_code, COARSE_CODE_MAP, coarse),
            (&mut maps.shared_code, SHARED_CODE_MAP, shared),
        ] {
            for (index, word) in bitmap(offsets).into_iter().enumerate() {
                map.set(index as u32, word, 0)
                    .with_context(|| format!("writing {name}[{index}]"))?;
            }
        }
        Ok(())
    }
}

/// The words of a bitmap of the 64-bit vDSO's bytes with `offsets` set.
fn bitmap(offsets: &[u32]) -> Vec<u64> {
    let mut words = vec![0u64; (VDSO_CODE_BYTES / 64) as usize];
    for &offset in offsets.iter().filter(|o| **o < VDSO_CODE_BYTES) {
        words[(offset / 64) as usize] |= 1 << (offset % 64);
    }
    words
}
