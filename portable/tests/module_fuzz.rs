//! Robustness of the patch-module loader: 5,000 fixed-seed mutations of the fixture, none may panic or write out of bounds.

mod module_support;

use module_support::*;
use portable::module::{MAX_MEMORY_SIZE, ModuleError, parse};

/// Mutated files tried.
const ROUNDS: usize = 5_000;
/// The byte the memory is filled with beyond `memory_size`.
const GUARD: u8 = 0xa5;
/// Guard bytes after the module memory.
const GUARD_SIZE: usize = 256;
/// Largest memory the test allocates for one link; bigger modules get a too-small buffer.
const MEMORY_CAP: usize = 1 << 20;

/// xorshift64: a small deterministic generator.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..bound` (`bound` > 0).
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
    /// A value that tends to hit boundaries.
    fn interesting(&mut self, length: usize) -> u64 {
        const VALUES: [u64; 12] =
            [0, 1, 2, 3, 0xff, 0x7fff, 0xffff, 0xfff1, 0xfff2, 0x7fff_ffff, 0xffff_ffff, u64::MAX];
        match self.below(4) {
            0 => VALUES[self.below(VALUES.len())],
            1 => self.below(64) as u64,
            2 => (length + self.below(32)).saturating_sub(16) as u64,
            _ => self.next(),
        }
    }
}

/// The byte ranges worth aiming at: ELF header, section headers, symbols, relocations, description.
fn regions(elf: &Elf) -> Vec<(usize, usize)> {
    let mut regions = vec![(0, 64), (elf.header(0), elf.header(elf.section_count()))];
    for index in 0..elf.section_count() {
        let kind = elf.section_type(index);
        if kind == 2 || kind == 4 || elf.section_name(index) == ".klp.patch" {
            regions.push((elf.contents(index), elf.contents(index) + elf.size(index) as usize));
        }
    }
    regions
}

/// Applies one to four random mutations to `bytes`.
fn mutate(random: &mut Random, bytes: &mut Vec<u8>, regions: &[(usize, usize)]) {
    for _ in 0..1 + random.below(4) {
        let length = bytes.len();
        if length < 8 {
            bytes.push(random.next() as u8);
            continue;
        }
        let (start, end) = regions[random.below(regions.len())];
        let in_region = |random: &mut Random, width: usize| {
            let span = end.min(length).saturating_sub(start + width).max(1);
            (start + random.below(span) / width * width).min(length - width)
        };
        match random.below(16) {
            0..=2 => {
                let at = random.below(length);
                bytes[at] ^= 1 << random.below(8);
            }
            3..=4 => {
                let at = random.below(length);
                bytes[at] = random.next() as u8;
            }
            5..=7 => {
                let at = in_region(random, 4);
                let value = random.interesting(length) as u32;
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            8..=10 => {
                let at = in_region(random, 8);
                let value = random.interesting(length);
                bytes[at..at + 8].copy_from_slice(&value.to_le_bytes());
            }
            11..=12 => {
                let at = in_region(random, 2);
                let value = random.interesting(length) as u16;
                bytes[at..at + 2].copy_from_slice(&value.to_le_bytes());
            }
            13 => bytes.truncate(random.below(length)),
            _ => {
                for _ in 0..1 + random.below(256) {
                    bytes.push(random.next() as u8);
                }
            }
        }
    }
}

/// The kernel TOC pointer handed to `link`: the fixture does not say `toc kernel`, so it goes unused.
const KERNEL_TOC_UNUSED: u64 = 0x0068_07d8;

/// A resolver that knows most names, at addresses derived from them, and refuses some.
fn resolver(seed: u64) -> impl FnMut(&str) -> Option<u64> {
    move |name: &str| {
        let hash = name.bytes().fold(seed | 1, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x100_0000_01b3));
        if hash % 8 == 0 { None } else { kernel(name).or(Some(hash & 0x0fff_fffc)) }
    }
}

#[test]
fn mutated_fixtures_are_accepted_or_refused_without_panics_or_stray_writes() {
    let elf = Elf::fixture();
    let regions = regions(&elf);
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let (mut refused, mut linked, mut refused_at_link, mut too_big) = (0, 0, 0, 0);
    for round in 0..ROUNDS {
        let mut bytes = FIXTURE.to_vec();
        mutate(&mut random, &mut bytes, &regions);
        let image = match parse(&bytes) {
            Ok(image) => image,
            Err(error) => {
                assert!(!error.to_string().is_empty());
                refused += 1;
                continue;
            }
        };
        let size = image.memory_size();
        let alignment = image.memory_alignment();
        assert!(size as u64 <= MAX_MEMORY_SIZE, "round {round}: memory {size}");
        assert!(alignment.is_power_of_two() && alignment >= 16, "round {round}: alignment {alignment}");
        let base = 0x1000_0000u64.next_multiple_of(alignment as u64);
        if size > MEMORY_CAP {
            let mut small = vec![0; MEMORY_CAP];
            let error = image.link(&mut small, base, KERNEL_TOC_UNUSED, &mut resolver(round as u64)).unwrap_err();
            assert_eq!(error, ModuleError::MemoryTooSmall { needed: size, given: MEMORY_CAP });
            too_big += 1;
            continue;
        }
        let mut memory = vec![GUARD; size + GUARD_SIZE];
        // Half the rounds hand link exactly memory_size bytes, half a longer buffer: in both
        // cases nothing past memory_size may change.
        let given = if round % 2 == 0 { &mut memory[..size] } else { &mut memory[..] };
        match image.link(given, base, KERNEL_TOC_UNUSED, &mut resolver(round as u64)) {
            Ok(module) => {
                linked += 1;
                assert!(
                    module
                        .sections
                        .iter()
                        .all(|section| section.address >= base && section.address + section.size <= base + size as u64)
                );
            }
            Err(error) => {
                assert!(!error.to_string().is_empty());
                refused_at_link += 1;
            }
        }
        assert!(memory[size..].iter().all(|&byte| byte == GUARD), "round {round}: write past memory_size");
    }
    println!(
        "{ROUNDS} mutations: {refused} refused by parse, {linked} linked, {refused_at_link} refused by link, {too_big} too big"
    );
    assert_eq!(refused + linked + refused_at_link + too_big, ROUNDS);
    assert!(refused > ROUNDS / 4 && linked > ROUNDS / 20, "the mutations should hit both outcomes");
}
