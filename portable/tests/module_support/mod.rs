//! Test helpers for the patch-module loader: the fixture object and a raw ELF editor to damage it.

#![allow(dead_code)]

/// `portable/testdata/fixture-patch.o`: the fixture crate compiled for the kernel target
/// (see `portable/testdata/fixture-patch/README.md`).
pub static FIXTURE: &[u8] = include_bytes!("../../testdata/fixture-patch.o");

/// Where the tests pretend the kernel functions and static are.
pub const KERNEL_FUNCTION: u64 = 0x0040_1230;
pub const KERNEL_OTHER: u64 = 0x0040_2460;
pub const KERNEL_STATIC: u64 = 0x0050_0008;

/// Section header fields (offsets inside a 64-byte ELF64 section header).
pub const SH_NAME: usize = 0;
pub const SH_TYPE: usize = 4;
pub const SH_FLAGS: usize = 8;
pub const SH_OFFSET: usize = 24;
pub const SH_SIZE: usize = 32;
pub const SH_LINK: usize = 40;
pub const SH_INFO: usize = 44;
pub const SH_ADDRALIGN: usize = 48;
pub const SH_ENTSIZE: usize = 56;

/// Symbol fields (offsets inside a 24-byte ELF64 symbol).
pub const ST_NAME: usize = 0;
pub const ST_INFO: usize = 4;
pub const ST_OTHER: usize = 5;
pub const ST_SHNDX: usize = 6;
pub const ST_VALUE: usize = 8;

/// One relocation as stored in the object.
#[derive(Debug, Clone, Copy)]
pub struct RawRelocation {
    /// File offset of the 24-byte entry.
    pub entry: usize,
    pub offset: u64,
    pub kind: u32,
    pub symbol: usize,
    pub addend: i64,
}

/// One symbol as stored in the object.
#[derive(Debug, Clone)]
pub struct RawSymbol {
    /// File offset of the 24-byte entry.
    pub entry: usize,
    pub name: String,
    pub section: u16,
    pub value: u64,
    pub other: u8,
    pub kind: u8,
}

/// A copy of an object with readers and writers for its raw fields.
#[derive(Clone)]
pub struct Elf {
    pub bytes: Vec<u8>,
}

impl Elf {
    /// A fresh copy of the fixture.
    pub fn fixture() -> Self {
        Elf { bytes: FIXTURE.to_vec() }
    }

    pub fn u16_at(&self, offset: usize) -> u16 {
        u16::from_le_bytes(self.bytes[offset..offset + 2].try_into().unwrap())
    }
    pub fn u32_at(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.bytes[offset..offset + 4].try_into().unwrap())
    }
    pub fn u64_at(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.bytes[offset..offset + 8].try_into().unwrap())
    }
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        self.bytes[offset..offset + 2].copy_from_slice(&value.to_le_bytes());
    }
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        self.bytes[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
    }
    pub fn set_u64(&mut self, offset: usize, value: u64) {
        self.bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
    }

    /// `e_shnum`.
    pub fn section_count(&self) -> usize {
        self.u16_at(60).into()
    }
    /// File offset of section header `index`.
    pub fn header(&self, index: usize) -> usize {
        self.u64_at(40) as usize + 64 * index
    }
    /// File offset of the section's contents.
    pub fn contents(&self, index: usize) -> usize {
        self.u64_at(self.header(index) + SH_OFFSET) as usize
    }
    /// `sh_size`.
    pub fn size(&self, index: usize) -> u64 {
        self.u64_at(self.header(index) + SH_SIZE)
    }
    /// A NUL-terminated string at file offset `offset`.
    pub fn string_at(&self, offset: usize) -> String {
        let end = self.bytes[offset..].iter().position(|&byte| byte == 0).unwrap();
        String::from_utf8(self.bytes[offset..offset + end].to_vec()).unwrap()
    }
    /// The name of section `index`.
    pub fn section_name(&self, index: usize) -> String {
        let names = self.contents(self.u16_at(62).into());
        self.string_at(names + self.u32_at(self.header(index) + SH_NAME) as usize)
    }
    /// The index of the section called `name`.
    pub fn section(&self, name: &str) -> usize {
        (0..self.section_count()).find(|&index| self.section_name(index) == name).unwrap_or_else(|| panic!("{name}"))
    }
    /// The index of the first section whose name starts with `prefix`.
    pub fn section_starting(&self, prefix: &str) -> usize {
        (0..self.section_count()).find(|&index| self.section_name(index).starts_with(prefix)).unwrap()
    }
    /// `sh_type` of section `index`.
    pub fn section_type(&self, index: usize) -> u32 {
        self.u32_at(self.header(index) + SH_TYPE)
    }

    /// Every symbol, the null symbol included.
    pub fn symbols(&self) -> Vec<RawSymbol> {
        let table = (0..self.section_count()).find(|&index| self.section_type(index) == 2).unwrap();
        let strings = self.contents(self.u32_at(self.header(table) + SH_LINK) as usize);
        (0..self.size(table) as usize / 24)
            .map(|index| {
                let entry = self.contents(table) + 24 * index;
                RawSymbol {
                    entry,
                    name: self.string_at(strings + self.u32_at(entry + ST_NAME) as usize),
                    section: self.u16_at(entry + ST_SHNDX),
                    value: self.u64_at(entry + ST_VALUE),
                    other: self.bytes[entry + ST_OTHER],
                    kind: self.bytes[entry + ST_INFO] & 0xf,
                }
            })
            .collect()
    }
    /// The symbol called `name`.
    pub fn symbol(&self, name: &str) -> RawSymbol {
        self.symbols().into_iter().find(|symbol| symbol.name == name).unwrap_or_else(|| panic!("{name}"))
    }

    /// The relocations of SHT_RELA section `index`.
    pub fn relocations(&self, index: usize) -> Vec<RawRelocation> {
        (0..self.size(index) as usize / 24)
            .map(|number| {
                let entry = self.contents(index) + 24 * number;
                let info = self.u64_at(entry + 8);
                RawRelocation {
                    entry,
                    offset: self.u64_at(entry),
                    kind: info as u32,
                    symbol: (info >> 32) as usize,
                    addend: self.u64_at(entry + 16) as i64,
                }
            })
            .collect()
    }
    /// Every SHT_RELA section and the section it patches.
    pub fn relocation_sections(&self) -> Vec<(usize, usize)> {
        (0..self.section_count())
            .filter(|&index| self.section_type(index) == 4)
            .map(|index| (index, self.u32_at(self.header(index) + SH_INFO) as usize))
            .collect()
    }
    /// Rewrites the type of relocation entry `entry` (a file offset).
    pub fn set_relocation_type(&mut self, entry: usize, kind: u32) {
        let info = self.u64_at(entry + 8);
        self.set_u64(entry + 8, (info & !0xffff_ffff) | u64::from(kind));
    }
}

/// A resolver that knows the three kernel names of the fixture.
pub fn kernel(name: &str) -> Option<u64> {
    match name {
        "klp_test_kernel_function" => Some(KERNEL_FUNCTION),
        "klp_test_other" => Some(KERNEL_OTHER),
        "klp_test_kernel_static" => Some(KERNEL_STATIC),
        _ => None,
    }
}
