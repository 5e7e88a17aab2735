//! Where each time-call counter slot's current key starts counting. A slot
//! given back is not zeroed (under churn, zeroing thousands of slots on every
//! CPU was a sixth of the observer's CPU: a copy and an update per slot): its
//! total as last read becomes the start of the next key made in it, and a
//! key's count is the slot's total less that start. Totals only grow, and a
//! slot is given back only when its key's process is gone, so its last read
//! total is final.

/// Per slot: the total (per-CPU values summed) as last read, and its key's start.
#[derive(Debug, Default)]
pub struct SlotTotals {
    read: Vec<u64>,
    start: Vec<u64>,
}

impl SlotTotals {
    /// The count of the key in `slot`, from the slot's total read just now.
    pub fn count(&mut self, slot: u32, total: u64) -> u64 {
        let slot = slot as usize;
        grow(&mut self.read, slot);
        self.read[slot] = total;
        total.saturating_sub(self.start.get(slot).copied().unwrap_or(0))
    }

    /// The slot is given back: the next key in it counts from its last total.
    pub fn given_back(&mut self, slot: u32) {
        let slot = slot as usize;
        let last = self.read.get(slot).copied().unwrap_or(0);
        grow(&mut self.start, slot);
        self.start[slot] = last;
    }
}

fn grow(totals: &mut Vec<u64>, slot: usize) {
    if totals.len() <= slot {
        totals.resize(slot + 1, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reused_slot_counts_its_new_key_from_the_old_keys_last_total() {
        let mut totals = SlotTotals::default();
        assert_eq!(totals.count(7, 5), 5);
        assert_eq!(totals.count(7, 12), 12);
        totals.given_back(7);
        // The next key made 3 calls in it.
        assert_eq!(totals.count(7, 15), 3);
        totals.given_back(7);
        assert_eq!(totals.count(7, 15), 0);
        // Other slots are untouched.
        assert_eq!(totals.count(3, 4), 4);
        // A slot given back before it was ever read starts at 0.
        totals.given_back(40);
        assert_eq!(totals.count(40, 2), 2);
    }
}
