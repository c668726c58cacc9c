//! The selected process's allocations in display order, kept in order as rows come and go.
//!
//! A sorted list cut into chunks of a few hundred rows: a row goes in or out with two binary
//! searches and a move within one chunk, and the row at an index is found by walking the
//! chunk lengths. With 100,000 rows that is a few hundred steps, where re-sorting the whole
//! list on every tick was the largest cost of the view.

use std::{cmp::Ordering, ops::Index};

use super::app::{AllocOrder, AllocRow};

/// Rows per chunk once split; a chunk splits at twice as many.
const CHUNK: usize = 512;

/// Allocation rows, ordered by [`AllocOrder::cmp`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AllocList {
    order: AllocOrder,
    chunks: Vec<Vec<AllocRow>>,
    len: usize,
}

impl AllocList {
    /// The rows, in any order, ordered by `order`.
    pub fn from_rows(mut rows: Vec<AllocRow>, order: AllocOrder) -> Self {
        rows.sort_unstable_by(|a, b| order.cmp(a, b));
        let len = rows.len();
        let mut chunks = Vec::with_capacity(len.div_ceil(CHUNK));
        let mut rest = rows.into_iter();
        loop {
            let chunk: Vec<AllocRow> = rest.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            chunks.push(chunk);
        }
        AllocList { order, chunks, len }
    }

    pub fn order(&self) -> AllocOrder {
        self.order
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.len = 0;
    }

    /// The row at `i`, in order.
    pub fn get(&self, mut i: usize) -> Option<&AllocRow> {
        for c in &self.chunks {
            if i < c.len() {
                return c.get(i);
            }
            i -= c.len();
        }
        None
    }

    pub fn iter(&self) -> impl Iterator<Item = &AllocRow> + '_ {
        self.chunks.iter().flatten()
    }

    /// The rows from index `i` on (what a scrolled table shows), without walking the ones
    /// before row by row.
    pub fn iter_from(&self, mut i: usize) -> impl Iterator<Item = &AllocRow> + '_ {
        let mut first = self.chunks.len();
        for (n, c) in self.chunks.iter().enumerate() {
            if i < c.len() {
                first = n;
                break;
            }
            i -= c.len();
        }
        self.chunks[first..].iter().flatten().skip(i)
    }

    /// The chunk where `row` is or would go.
    fn chunk_for(&self, row: &AllocRow) -> usize {
        let order = self.order;
        self.chunks.partition_point(|c| {
            c.last()
                .is_some_and(|l| order.cmp(l, row) == Ordering::Less)
        })
    }

    /// Where `row` (equal in every field that orders) is, if it is in the list.
    pub fn position(&self, row: &AllocRow) -> Option<usize> {
        let ci = self.chunk_for(row);
        let c = self.chunks.get(ci)?;
        let i = c.binary_search_by(|r| self.order.cmp(r, row)).ok()?;
        Some(self.chunks[..ci].iter().map(Vec::len).sum::<usize>() + i)
    }

    /// Adds a row in its place.
    pub fn insert(&mut self, row: AllocRow) {
        let order = self.order;
        let ci = self
            .chunk_for(&row)
            .min(self.chunks.len().saturating_sub(1));
        if self.chunks.is_empty() {
            self.chunks.push(Vec::with_capacity(2 * CHUNK));
        }
        let c = &mut self.chunks[ci];
        let i = c
            .binary_search_by(|r| order.cmp(r, &row))
            .unwrap_or_else(|i| i);
        c.insert(i, row);
        self.len += 1;
        if c.len() >= 2 * CHUNK {
            let tail = c.split_off(CHUNK);
            self.chunks.insert(ci + 1, tail);
        }
    }

    /// Takes out the row that orders equal to `row`; false when there was none.
    pub fn remove(&mut self, row: &AllocRow) -> bool {
        let order = self.order;
        let ci = self.chunk_for(row);
        let Some(c) = self.chunks.get_mut(ci) else {
            return false;
        };
        let Ok(i) = c.binary_search_by(|r| order.cmp(r, row)) else {
            return false;
        };
        c.remove(i);
        self.len -= 1;
        if c.is_empty() {
            self.chunks.remove(ci);
        }
        true
    }
}

impl Index<usize> for AllocList {
    type Output = AllocRow;

    fn index(&self, i: usize) -> &AllocRow {
        match self.get(i) {
            Some(r) => r,
            None => panic!("index {i} out of {} allocation rows", self.len),
        }
    }
}
