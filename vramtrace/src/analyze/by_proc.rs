//! Per-process state of the replay's consumers, found without hashing: in the order of the
//! processes' ids, the process of the last lookup checked first (most records are about the
//! same process as the one before, and a trace has a few processes, rarely thousands).

/// Values by process id, in id order.
#[derive(Clone, Debug)]
pub(super) struct ByProc<T> {
    items: Vec<(u32, T)>,
    /// The index of the last lookup.
    last: usize,
}

impl<T> Default for ByProc<T> {
    fn default() -> Self {
        ByProc {
            items: Vec::new(),
            last: 0,
        }
    }
}

impl<T> ByProc<T> {
    /// The value of process `proc`, made by `make` when it has none yet.
    #[inline]
    pub(super) fn get_or_insert_with(&mut self, proc: u32, make: impl FnOnce() -> T) -> &mut T {
        let at = match self.items.get(self.last) {
            Some((p, _)) if *p == proc => self.last,
            _ => match self.items.binary_search_by_key(&proc, |(p, _)| *p) {
                Ok(at) => at,
                Err(at) => {
                    self.items.insert(at, (proc, make()));
                    at
                }
            },
        };
        self.last = at;
        &mut self.items[at].1
    }

    pub(super) fn get(&self, proc: u32) -> Option<&T> {
        self.items
            .binary_search_by_key(&proc, |(p, _)| *p)
            .ok()
            .map(|at| &self.items[at].1)
    }

    /// Every process's value, in id order.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &T)> {
        self.items.iter().map(|(p, v)| (*p, v))
    }

    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut T> {
        self.items.iter_mut().map(|(_, v)| v)
    }
}

impl<T> IntoIterator for ByProc<T> {
    type Item = (u32, T);
    type IntoIter = std::vec::IntoIter<(u32, T)>;

    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_found_by_process_in_any_order_of_lookups() {
        let mut m: ByProc<Vec<u32>> = ByProc::default();
        // Lookups that hit the last one, go back and forth, and insert before, between and
        // after the ones there.
        for proc in [5, 5, 1, 9, 5, 3, 9, 9, 1, 7, 0, 5] {
            m.get_or_insert_with(proc, Vec::new).push(proc);
        }
        let got: Vec<(u32, usize)> = m.iter().map(|(p, v)| (p, v.len())).collect();
        assert_eq!(got, [(0, 1), (1, 2), (3, 1), (5, 4), (7, 1), (9, 3)]);
        assert!(m.iter().all(|(p, v)| v.iter().all(|&x| x == p)));
        assert_eq!(m.get(9).map(Vec::len), Some(3));
        assert!(m.get(4).is_none());
    }
}
