//! The addresses a process freed lately, to tell a double free from a free of an address
//! that was never seen (attached mid-run).

/// Slots of the table: a power of two.
const SLOTS: usize = 1 << 13;

/// A direct-mapped table of freed addresses: each address has one slot, chosen by a hash of
/// it, and a later free whose address hashes to the same slot takes it. So the latest frees
/// are nearly all remembered and older ones fade out one by one; a double free of a
/// forgotten address reads as a free of an unknown address, which is still an anomaly.
///
/// One store per free and one load per allocation, in 64 KiB allocated at the first free:
/// a hash set of the same reach cost a tenth of a trace's analysis.
#[derive(Clone, Debug, Default)]
pub(super) struct RecentlyFreed {
    /// 0 is an empty slot: freeing NULL frees nothing and is never remembered.
    slots: Option<Box<[u64]>>,
}

impl RecentlyFreed {
    fn slot(addr: u64) -> usize {
        // Fibonacci hashing: allocations are aligned, so the low bits alone would crowd.
        (addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - SLOTS.trailing_zeros())) as usize
    }

    /// `addr` was freed.
    pub(super) fn insert(&mut self, addr: u64) {
        if addr == 0 {
            return;
        }
        let slots = self
            .slots
            .get_or_insert_with(|| vec![0; SLOTS].into_boxed_slice());
        slots[Self::slot(addr)] = addr;
    }

    /// `addr` is allocated again: no longer freed.
    pub(super) fn remove(&mut self, addr: u64) {
        if let Some(slots) = &mut self.slots {
            let s = &mut slots[Self::slot(addr)];
            if *s == addr {
                *s = 0;
            }
        }
    }

    /// Whether `addr` was freed lately and not allocated since.
    pub(super) fn contains(&self, addr: u64) -> bool {
        addr != 0
            && self
                .slots
                .as_ref()
                .is_some_and(|slots| slots[Self::slot(addr)] == addr)
    }

    pub(super) fn clear(&mut self) {
        self.slots = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_the_latest_frees_until_allocated_again() {
        let mut f = RecentlyFreed::default();
        assert!(!f.contains(0x7f00_0000_0000));
        let addrs: Vec<u64> = (0..1000)
            .map(|i| 0x7f00_0000_0000 + i * 0x20_0000)
            .collect();
        for &a in &addrs {
            f.insert(a);
        }
        let kept = addrs.iter().filter(|&&a| f.contains(a)).count();
        // 1000 aligned addresses in 8192 slots: nearly all of them kept.
        assert!(kept >= 900, "kept {kept} of 1000");
        f.remove(addrs[999]);
        assert!(!f.contains(addrs[999]));
        // Removing an address that only shares a slot keeps the one there.
        let other = (1..)
            .map(|i| 0x5000_0000_0000u64 + i * 512)
            .find(|&a| RecentlyFreed::slot(a) == RecentlyFreed::slot(addrs[0]))
            .unwrap();
        f.remove(other);
        assert!(f.contains(addrs[0]) || !f.contains(other));
        f.insert(0);
        assert!(!f.contains(0));
        f.clear();
        assert!(!f.contains(addrs[0]));
    }

    #[test]
    fn a_later_free_in_the_same_slot_takes_it() {
        let mut f = RecentlyFreed::default();
        let a = 0x7f00_0000_0000u64;
        let b = (1..)
            .map(|i| a + i * 512)
            .find(|&b| RecentlyFreed::slot(b) == RecentlyFreed::slot(a))
            .unwrap();
        f.insert(a);
        f.insert(b);
        assert!(f.contains(b));
        assert!(!f.contains(a));
    }
}
