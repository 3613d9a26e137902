//! The ftrace site table: each traceable function's entry, site word and name, and the lookups over them.
//!
//! The kernel builds one `SiteTable` at boot from the validated
//! `__patchable_function_entries` records and never changes it afterwards;
//! who traces each site (the mutable part) lives beside it in the kernel.
//! Everything here is untraced (only the kernel crate gets ftrace sites), so
//! `search_sorted` may run inside ftrace handlers.
use crate::ftrace::glob_match;
use alloc::vec::Vec;

/// One traceable function. The debugger reads the table as an array of these
/// (gdb/kernel.py `ftrace-sites`): the function, the site word's address, then
/// the name as a pointer and a length.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Site {
    /// The function's global entry point (its symbol address).
    pub function: u64,
    /// The site's second word, the one that becomes `bl stub`: the ip handlers see.
    pub address: u64,
    /// The function's name from the embedded symbol table.
    pub name: &'static str,
}

/// Every site, sorted by site address, with an index by name.
pub struct SiteTable {
    sites: Vec<Site>,
    /// (hash of the name, site index), sorted by hash then index (so by
    /// address among equal hashes): an exact-name lookup is a binary search
    /// over integers and one string comparison, where a search over the names
    /// themselves compares long common prefixes ("kernel::...") byte by byte
    /// at every step.
    names: Vec<(u64, usize)>,
}

/// Why `named_entry` found no single function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameError {
    /// No traceable function has the name.
    Missing,
    /// Several have it and no position was given.
    Ambiguous { count: usize },
    /// The position is not in 1..=count.
    BadPosition { count: usize },
}

impl SiteTable {
    /// A table with no sites.
    pub const EMPTY: SiteTable = SiteTable { sites: Vec::new(), names: Vec::new() };

    /// The table of `sites`, in any order.
    pub fn new(mut sites: Vec<Site>) -> SiteTable {
        sites.sort_by_key(|site| site.address);
        let mut names: Vec<(u64, usize)> =
            sites.iter().enumerate().map(|(index, site)| (name_hash(site.name), index)).collect();
        names.sort_unstable();
        SiteTable { sites, names }
    }

    /// Every site, in address order; a site's index is its position here.
    pub fn sites(&self) -> &[Site] {
        &self.sites
    }

    /// The site whose word is at `ip` (the ip a handler sees).
    pub fn at(&self, ip: u64) -> Option<&Site> {
        let index = self.sites.binary_search_by_key(&ip, |site| site.address).ok()?;
        Some(&self.sites[index])
    }

    /// The function (global entry) whose site is at `ip`.
    pub fn function_of(&self, ip: u64) -> Option<u64> {
        self.at(ip).map(|site| site.function)
    }

    /// Index of the site of the function at `address`, given as its global
    /// entry or its site word. A site lies 4 bytes after its function's entry
    /// (12 with the TOC set-up pair before it), so the first site at or after
    /// `address` is the only candidate: another function's site in between
    /// would put that function's two words inside this one's first four.
    pub fn index_of(&self, address: u64) -> Option<usize> {
        let first = self.sites.partition_point(|site| site.address < address);
        let site = self.sites.get(first)?;
        (site.function == address || site.address == address).then_some(first)
    }

    /// Indices of the sites of `addresses` (global entries or site words); the
    /// first address without a site is the error.
    pub fn indices_of(&self, addresses: &[u64]) -> Result<Vec<usize>, u64> {
        addresses.iter().map(|&address| self.index_of(address).ok_or(address)).collect()
    }

    /// Site addresses of `indices`, sorted.
    pub fn addresses(&self, indices: &[usize]) -> Vec<u64> {
        let mut addresses: Vec<u64> = indices.iter().map(|&index| self.sites[index].address).collect();
        addresses.sort_unstable();
        addresses
    }

    /// Indices of the sites named exactly `name`, in address order.
    fn same_name<'a>(&'a self, name: &'a str) -> impl Iterator<Item = usize> + 'a {
        let hash = name_hash(name);
        let first = self.names.partition_point(|(other, _)| *other < hash);
        self.names[first..]
            .iter()
            .take_while(move |(other, _)| *other == hash)
            .map(|(_, index)| *index)
            .filter(move |index| same_bytes(self.sites[*index].name.as_bytes(), name.as_bytes()))
    }

    /// Site indices of the functions named exactly `name`, in address order.
    pub fn named(&self, name: &str) -> Vec<usize> {
        self.same_name(name).collect()
    }

    /// The site of the function named exactly `name`; with a 1-based
    /// `position` among several of that name, in address order. No
    /// allocation: this runs once per function of a patch being enabled.
    pub fn named_entry(&self, name: &str, position: Option<usize>) -> Result<&Site, NameError> {
        // One pass: count the functions of that name, keep the wanted one.
        let wanted = position.unwrap_or(1);
        let (mut count, mut chosen) = (0, None);
        for index in self.same_name(name) {
            count += 1;
            if count == wanted {
                chosen = Some(index);
            }
        }
        match (count, position, chosen) {
            (0, _, _) => Err(NameError::Missing),
            (1, None, Some(index)) | (_, Some(_), Some(index)) => Ok(&self.sites[index]),
            (count, None, _) => Err(NameError::Ambiguous { count }),
            (count, Some(_), None) => Err(NameError::BadPosition { count }),
        }
    }

    /// Indices of the sites whose function name matches `glob`, in address
    /// order (a plain name without `*` or `?` is compared exactly, which is
    /// much cheaper).
    pub fn matching(&self, glob: &str) -> Vec<usize> {
        if !glob.contains(['*', '?']) {
            return self.named(glob);
        }
        self.sites.iter().enumerate().filter(|(_, site)| glob_match(glob, site.name)).map(|(index, _)| index).collect()
    }
}

/// A word-at-a-time multiplicative hash (the FxHash step): eight bytes per
/// round, good enough to spread symbol names, which are compared anyway.
pub fn name_hash(name: &str) -> u64 {
    const SEED: u64 = 0x517c_c1b7_2722_0a95;
    let bytes = name.as_bytes();
    let mut hash = bytes.len() as u64;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let word = u64::from_le_bytes(chunk.try_into().expect("8 bytes"));
        hash = (hash.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
    // The last 0-7 bytes, gathered without a memcpy call.
    let tail = chunks.remainder().iter().rev().fold(0u64, |word, &byte| (word << 8) | byte as u64);
    (hash.rotate_left(5) ^ tail).wrapping_mul(SEED)
}

/// Byte equality, eight bytes at a time (the compiler_builtins memcmp the
/// kernel links compares one byte per iteration).
pub fn same_bytes(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let (left_words, left_tail) = left.split_at(left.len() / 8 * 8);
    let (right_words, right_tail) = right.split_at(left_words.len());
    for (a, b) in left_words.chunks_exact(8).zip(right_words.chunks_exact(8)) {
        if u64::from_ne_bytes(a.try_into().expect("8 bytes")) != u64::from_ne_bytes(b.try_into().expect("8 bytes")) {
            return false;
        }
    }
    left_tail.iter().zip(right_tail).all(|(a, b)| a == b)
}

/// Index of `key` in the ascending `sorted` (any one of equal keys), by a
/// binary search written out by hand: it runs inside ftrace handlers, on
/// every traced call. It calls nothing, not even a closure (as
/// `<[T]>::binary_search` does), and is inlined into its caller, which keeps
/// the handler free of calls into traced code and of call overhead.
#[inline(always)]
pub fn search_sorted(sorted: &[u64], key: u64) -> Option<usize> {
    search_by(sorted.len(), key, |index| sorted[index])
}

/// Index of `key` among `length` ascending keys, where `key_at(index)` reads
/// the key at `index` (always `< length`): the one binary search of the
/// traced paths. Callers whose table is not a plain `[u64]` (the livepatch
/// handler's (site, replacement) pairs) read their keys through `key_at`,
/// without a bounds check if they wish, so that the handler stays a leaf.
/// Inlined with its closure, so it calls nothing.
#[inline(always)]
pub fn search_by(length: usize, key: u64, key_at: impl Fn(usize) -> u64) -> Option<usize> {
    let (mut low, mut high) = (0, length);
    while low < high {
        let middle = low + (high - low) / 2;
        let candidate = key_at(middle);
        if candidate == key {
            return Some(middle);
        } else if candidate < key {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::format;
    use alloc::string::String;
    use alloc::vec;

    /// A function at `function` whose site is 4 bytes on, or 12 with a TOC set-up pair.
    fn site(function: u64, toc: bool, name: &'static str) -> Site {
        Site { function, address: function + if toc { 12 } else { 4 }, name }
    }

    /// Four functions given out of order, two of them named `twin`.
    fn table() -> SiteTable {
        SiteTable::new(vec![
            site(0x1300, false, "kernel::twin"),
            site(0x1000, true, "kernel::first"),
            site(0x1100, false, "kernel::twin"),
            site(0x1200, true, "kernel::shell::execute"),
        ])
    }

    #[test]
    fn sites_are_in_address_order() {
        let table = table();
        let functions: Vec<u64> = table.sites().iter().map(|site| site.function).collect();
        assert_eq!(functions, [0x1000, 0x1100, 0x1200, 0x1300]);
        assert!(SiteTable::EMPTY.sites().is_empty());
    }

    #[test]
    fn site_at_an_ip() {
        let table = table();
        assert_eq!(table.function_of(0x100c), Some(0x1000));
        assert_eq!(table.function_of(0x1104), Some(0x1100));
        assert_eq!(table.at(0x120c).map(|site| site.name), Some("kernel::shell::execute"));
        // Only the site word itself: not the entry, not the word before.
        assert_eq!(table.function_of(0x1000), None);
        assert_eq!(table.function_of(0x1008), None);
        assert_eq!(table.function_of(0x1304 + 4), None);
        assert_eq!(SiteTable::EMPTY.function_of(0x100c), None);
    }

    #[test]
    fn index_by_entry_or_site() {
        let table = table();
        // Global entry 12 bytes before its site (TOC pair), or 4.
        assert_eq!(table.index_of(0x1000), Some(0));
        assert_eq!(table.index_of(0x100c), Some(0));
        assert_eq!(table.index_of(0x1100), Some(1));
        assert_eq!(table.index_of(0x1104), Some(1));
        assert_eq!(table.index_of(0x1300), Some(3));
        assert_eq!(table.index_of(0x1304), Some(3));
        // Neither an entry nor a site: below, between (the local entry, a
        // notrace function's entry), above.
        assert_eq!(table.index_of(0x0f00), None);
        assert_eq!(table.index_of(0x1008), None);
        assert_eq!(table.index_of(0x1004), None);
        assert_eq!(table.index_of(0x1180), None);
        assert_eq!(table.index_of(0x1400), None);
        assert_eq!(SiteTable::EMPTY.index_of(0x1000), None);
    }

    #[test]
    fn indices_of_several_addresses() {
        let table = table();
        assert_eq!(table.indices_of(&[0x1300, 0x100c]), Ok(vec![3, 0]));
        assert_eq!(table.indices_of(&[0x1000, 0x1180, 0x1400]), Err(0x1180));
        assert_eq!(table.indices_of(&[]), Ok(vec![]));
        assert_eq!(table.addresses(&[3, 0, 2]), [0x100c, 0x120c, 0x1304]);
    }

    #[test]
    fn names_exactly() {
        let table = table();
        assert_eq!(table.named("kernel::first"), [0]);
        assert_eq!(table.named("kernel::twin"), [1, 3], "address order");
        assert_eq!(table.named("kernel::firs"), [] as [usize; 0]);
        assert_eq!(table.named("kernel::first::"), [] as [usize; 0]);
        assert_eq!(table.named(""), [] as [usize; 0]);
        assert_eq!(SiteTable::EMPTY.named("kernel::first"), [] as [usize; 0]);
    }

    #[test]
    fn equal_hashes_are_told_apart_by_the_names() {
        // A collision, made by hand: both sites filed under the hash of "kernel::a".
        let sites = vec![site(0x1000, false, "kernel::a"), site(0x1100, false, "kernel::b")];
        let hash = name_hash("kernel::a");
        let table = SiteTable { sites, names: vec![(hash, 0), (hash, 1)] };
        assert_eq!(table.named("kernel::a"), [0]);
        assert_eq!(table.named_entry("kernel::a", None).map(|site| site.function), Ok(0x1000));
    }

    #[test]
    fn many_names_each_found_at_its_sites() {
        // Many names, so that the hash index is searched, not scanned: every
        // one is found at its own site and nowhere else.
        let names: Vec<&'static str> =
            (0..300).map(|number| &*String::leak(format!("kernel::module{}::function", number % 150))).collect();
        let sites = names.iter().enumerate().map(|(index, name)| site(0x10_0000 + index as u64 * 0x40, false, name));
        let table = SiteTable::new(sites.collect());
        for (index, name) in names.iter().enumerate().take(150) {
            assert_eq!(table.named(name), [index, index + 150]);
        }
    }

    #[test]
    fn one_named_entry() {
        let table = table();
        assert_eq!(table.named_entry("kernel::first", None).map(|site| site.function), Ok(0x1000));
        assert_eq!(table.named_entry("kernel::first", Some(1)).map(|site| site.address), Ok(0x100c));
        assert_eq!(table.named_entry("kernel::first", Some(2)), Err(NameError::BadPosition { count: 1 }));
        assert_eq!(table.named_entry("kernel::nothing", None), Err(NameError::Missing));
        assert_eq!(table.named_entry("kernel::nothing", Some(1)), Err(NameError::Missing));
        assert_eq!(table.named_entry("kernel::twin", None), Err(NameError::Ambiguous { count: 2 }));
        assert_eq!(table.named_entry("kernel::twin", Some(1)).map(|site| site.function), Ok(0x1100));
        assert_eq!(table.named_entry("kernel::twin", Some(2)).map(|site| site.function), Ok(0x1300));
        assert_eq!(table.named_entry("kernel::twin", Some(3)), Err(NameError::BadPosition { count: 2 }));
        assert_eq!(table.named_entry("kernel::twin", Some(0)), Err(NameError::BadPosition { count: 2 }));
    }

    #[test]
    fn globs_and_plain_names() {
        let table = table();
        assert_eq!(table.matching("kernel::*"), [0, 1, 2, 3]);
        assert_eq!(table.matching("*twin"), [1, 3]);
        assert_eq!(table.matching("kernel::shell::exec?te"), [2]);
        assert_eq!(table.matching("kernel::twin"), [1, 3]);
        assert_eq!(table.matching("twin"), [] as [usize; 0], "a plain name is exact");
    }

    #[test]
    fn hashes() {
        // Every byte counts, including the length and the 0-7 tail bytes.
        let names = ["", "a", "b", "ab", "ba", "abcdefgh", "abcdefgi", "abcdefgh\0", "abcdefghi", "bbcdefghi"];
        for (index, name) in names.iter().enumerate() {
            assert_eq!(name_hash(name), name_hash(&String::from(*name)), "depends only on the bytes");
            for other in &names[index + 1..] {
                assert_ne!(name_hash(name), name_hash(other), "{name:?} and {other:?}");
            }
        }
    }

    #[test]
    fn byte_equality() {
        assert!(same_bytes(b"", b""));
        assert!(same_bytes(b"kernel::shell::execute", b"kernel::shell::execute"));
        assert!(!same_bytes(b"kernel::shell::execute", b"kernel::shell::executf"), "tail byte");
        assert!(!same_bytes(b"kernel::shell::execute", b"kernel;:shell::execute"), "word byte");
        assert!(!same_bytes(b"abcdefgh", b"abcdefghi"), "length");
        assert!(!same_bytes(b"abc", b"abd"));
    }

    #[test]
    fn search_empty_and_one() {
        assert_eq!(search_sorted(&[], 5), None);
        assert_eq!(search_sorted(&[5], 5), Some(0));
        assert_eq!(search_sorted(&[5], 4), None);
        assert_eq!(search_sorted(&[5], 6), None);
    }

    #[test]
    fn search_every_position_and_every_gap() {
        for length in 1..=9u64 {
            let sorted: Vec<u64> = (0..length).map(|index| 10 + index * 10).collect();
            for (index, &key) in sorted.iter().enumerate() {
                assert_eq!(search_sorted(&sorted, key), Some(index), "{key} in {sorted:?}");
                // Absent between neighbours, and below the first.
                assert_eq!(search_sorted(&sorted, key - 5), None, "{} in {sorted:?}", key - 5);
            }
            assert_eq!(search_sorted(&sorted, 0), None, "below");
            assert_eq!(search_sorted(&sorted, length * 10 + 5), None, "above");
            assert_eq!(search_sorted(&sorted, u64::MAX), None, "far above");
        }
    }

    #[test]
    fn search_by_reads_only_indices_below_the_length() {
        // The livepatch handler reads its pairs unchecked on this promise.
        let pairs: Vec<(u64, u64)> = (0..9).map(|index| (100 + 8 * index, index)).collect();
        for length in 0..=pairs.len() {
            for key in (90..=180).step_by(4) {
                let asked = core::cell::RefCell::new(Vec::new());
                let found = search_by(length, key, |index| {
                    asked.borrow_mut().push(index);
                    pairs[index].0
                });
                assert!(asked.borrow().iter().all(|&index| index < length), "{:?} of {length}", asked.borrow());
                let expected = pairs[..length].iter().position(|pair| pair.0 == key);
                assert_eq!(found, expected, "key {key} among {length}");
            }
        }
    }

    #[test]
    fn search_with_duplicates_finds_one_of_them() {
        let sorted = [1, 3, 3, 3, 7, 7, 9];
        for key in [1, 3, 7, 9] {
            let index = search_sorted(&sorted, key).expect("present");
            assert_eq!(sorted[index], key);
        }
        assert_eq!(search_sorted(&sorted, 5), None);
        assert_eq!(search_sorted(&sorted, 8), None);
    }
}
