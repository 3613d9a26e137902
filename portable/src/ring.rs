//! A fixed-size ring buffer that overwrites its oldest entry when full and counts what it lost.

/// `N` entries of `T`; no allocation.
pub struct RingBuffer<T: Copy, const N: usize> {
    entries: [T; N],
    /// Index of the oldest entry.
    start: usize,
    length: usize,
    lost: u64,
}

impl<T: Copy, const N: usize> RingBuffer<T, N> {
    /// An empty buffer; `filler` initialises the unused slots.
    pub const fn new(filler: T) -> Self {
        RingBuffer { entries: [filler; N], start: 0, length: 0, lost: 0 }
    }

    /// Appends `entry`, overwriting the oldest one when full.
    #[inline]
    pub fn push(&mut self, entry: T) {
        let mut slot = self.start + self.length;
        if slot >= N {
            slot -= N;
        }
        self.entries[slot] = entry;
        if self.length == N {
            self.start = if self.start + 1 == N { 0 } else { self.start + 1 };
            self.lost += 1;
        } else {
            self.length += 1;
        }
    }

    /// Entries, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        (0..self.length).map(move |index| &self.entries[(self.start + index) % N])
    }

    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Entries overwritten before anyone read them.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Empties the buffer and the lost count.
    pub fn clear(&mut self) {
        self.start = 0;
        self.length = 0;
        self.lost = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overwrites_oldest_and_counts_losses() {
        let mut ring: RingBuffer<u32, 4> = RingBuffer::new(0);
        for value in 1..=3 {
            ring.push(value);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(ring.lost(), 0);
        for value in 4..=10 {
            ring.push(value);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [7, 8, 9, 10]);
        assert_eq!(ring.lost(), 6);
        ring.clear();
        assert!(ring.is_empty());
        ring.push(11);
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [11]);
    }
}
