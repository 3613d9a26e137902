//! A set of CPU numbers (at most 64), as a bit mask: which CPUs a cross-CPU call targets, which are online.

/// CPU numbers 0..64 as bits of one word; copied by value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuSet(u64);

/// Most CPUs a set can hold.
pub const CAPACITY: usize = 64;

impl CpuSet {
    /// No CPU.
    pub const EMPTY: CpuSet = CpuSet(0);

    /// The set whose bit `n` stands for CPU `n`.
    pub const fn from_bits(bits: u64) -> CpuSet {
        CpuSet(bits)
    }

    /// The bits: bit `n` for CPU `n`.
    pub const fn bits(self) -> u64 {
        self.0
    }

    /// CPUs `0..count` (every CPU below `count`, at most `CAPACITY`).
    pub const fn first(count: usize) -> CpuSet {
        if count >= CAPACITY { CpuSet(u64::MAX) } else { CpuSet((1 << count) - 1) }
    }

    /// Only `cpu` (empty when `cpu` is out of range).
    pub const fn only(cpu: usize) -> CpuSet {
        if cpu >= CAPACITY { CpuSet(0) } else { CpuSet(1 << cpu) }
    }

    /// Whether `cpu` is in the set.
    pub const fn contains(self, cpu: usize) -> bool {
        cpu < CAPACITY && self.0 & (1 << cpu) != 0
    }

    /// The set with `cpu` added.
    pub const fn with(self, cpu: usize) -> CpuSet {
        CpuSet(self.0 | CpuSet::only(cpu).0)
    }

    /// The set without `cpu`.
    pub const fn without(self, cpu: usize) -> CpuSet {
        CpuSet(self.0 & !CpuSet::only(cpu).0)
    }

    /// The CPUs in both sets.
    pub const fn intersection(self, other: CpuSet) -> CpuSet {
        CpuSet(self.0 & other.0)
    }

    /// How many CPUs are in the set.
    pub const fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set has no CPU.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The CPU numbers in the set, lowest first.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut rest = self.0;
        core::iter::from_fn(move || {
            if rest == 0 {
                return None;
            }
            let cpu = rest.trailing_zeros() as usize;
            rest &= rest - 1;
            Some(cpu)
        })
    }
}

impl core::fmt::Display for CpuSet {
    /// As Linux prints a CPU list: `0-2,5`.
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut cpus = self.iter().peekable();
        let mut first = true;
        while let Some(start) = cpus.next() {
            let mut end = start;
            while cpus.peek() == Some(&(end + 1)) {
                end = cpus.next().unwrap_or(end);
            }
            if !first {
                formatter.write_str(",")?;
            }
            first = false;
            if end == start { write!(formatter, "{start}")? } else { write!(formatter, "{start}-{end}")? }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    #[test]
    fn builds_and_queries_sets() {
        let set = CpuSet::first(3).without(1).with(5);
        assert_eq!(set.bits(), 0b10_0101);
        assert!(set.contains(0) && set.contains(2) && set.contains(5));
        assert!(!set.contains(1) && !set.contains(3) && !set.contains(64) && !set.contains(usize::MAX));
        assert_eq!(set.len(), 3);
        assert_eq!(set.iter().collect::<Vec<_>>(), [0, 2, 5]);
        assert_eq!(set.intersection(CpuSet::first(4)), CpuSet::from_bits(0b101));
        assert!(CpuSet::EMPTY.is_empty() && !set.is_empty());
    }

    #[test]
    fn edges_of_the_word() {
        assert_eq!(CpuSet::first(0), CpuSet::EMPTY);
        assert_eq!(CpuSet::first(64).bits(), u64::MAX);
        assert_eq!(CpuSet::first(100).bits(), u64::MAX);
        assert_eq!(CpuSet::only(63).bits(), 1 << 63);
        assert_eq!(CpuSet::only(64), CpuSet::EMPTY);
        assert_eq!(CpuSet::first(64).iter().count(), 64);
        assert_eq!(CpuSet::only(63).iter().collect::<Vec<_>>(), [63]);
    }

    #[test]
    fn prints_ranges() {
        assert_eq!(CpuSet::EMPTY.to_string(), "");
        assert_eq!(CpuSet::only(3).to_string(), "3");
        assert_eq!(CpuSet::first(4).to_string(), "0-3");
        assert_eq!(CpuSet::first(3).without(1).with(5).with(6).with(7).to_string(), "0,2,5-7");
    }
}
