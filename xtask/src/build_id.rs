//! Fills the kernel's `.klp_build_id` section, last after linking: the image's build id and the source commit.
//!
//! The build id is SHA-256, truncated to 20 bytes (the size of GNU's default
//! SHA-1 build-id), of what the boot loader puts in memory: the ELF entry
//! point, then for each PT_LOAD segment in file order its virtual address,
//! memory size and file bytes, with the `.klp_build_id` section counted as
//! zeros (so the id does not depend on itself). The symbol table and the
//! function notes are filled before it and are part of what it covers; debug
//! information and the ELF symbol table are not loaded and not covered. Two
//! builds whose loaded bytes are equal therefore have the same id, whatever
//! their commit: a patch made for one is correct for the other.

use anyhow::{Context, Result, bail};
use object::read::elf::ElfFile64;
use object::{Endianness, Object, ObjectSegment};
use portable::build_id::{BuildId, BuildInfo, ID_LENGTH};
use sha2::{Digest, Sha256};

use crate::symbols::reservation;
use crate::workspace_root;

pub use portable::build_id::SECTION;

/// The source commit and whether the work tree differs from it (tracked files
/// only); ("unknown", false) outside a git work tree. For a dirty tree the
/// commit reads `COMMIT+DIGEST` ([`work_tree_digest`]), so that a tool that
/// rebuilds the kernel's source (`patch from-diff`) can tell whether the work
/// tree still holds what the kernel was built from.
pub fn source_commit() -> (String, bool) {
    let (commit, dirty) = clean_commit();
    match (dirty, work_tree_digest()) {
        (true, Some(digest)) => (format!("{commit}+{digest}"), true),
        _ => (commit, dirty),
    }
}

/// 12 hex digits of SHA-256 over `git diff HEAD --binary` (git's own diff:
/// no external diff or text conversion from the user's configuration), then
/// each untracked, not ignored file's path and contents: the work tree's
/// changes; `None` outside a git work tree.
pub fn work_tree_digest() -> Option<String> {
    let mut hash = Sha256::new();
    hash.update(git(&["diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv"])?);
    let untracked = git(&["ls-files", "--others", "--exclude-standard", "-z"])?;
    for path in untracked.split(|&byte| byte == 0).filter(|path| !path.is_empty()) {
        hash.update(path);
        hash.update(std::fs::read(workspace_root().join(String::from_utf8_lossy(path).as_ref())).unwrap_or_default());
    }
    Some(hash.finalize()[..6].iter().map(|byte| format!("{byte:02x}")).collect())
}

/// What `git ARGUMENTS` printed in the workspace root; `None` if it failed.
fn git(arguments: &[&str]) -> Option<Vec<u8>> {
    let output = std::process::Command::new("git").args(arguments).current_dir(workspace_root()).output().ok()?;
    output.status.success().then_some(output.stdout)
}

/// The commit and the dirty flag, without the digest.
fn clean_commit() -> (String, bool) {
    let git = |arguments: &[&str]| git(arguments).map(|output| String::from_utf8_lossy(&output).trim().to_string());
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) if !commit.is_empty() => {
            let dirty =
                git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|changes| !changes.is_empty());
            (commit, dirty)
        }
        _ => (String::from("unknown"), false),
    }
}

/// The build id of the linked kernel `data` (see the module documentation).
pub fn compute(data: &[u8]) -> Result<BuildId> {
    let file = ElfFile64::<Endianness>::parse(data).context("the kernel is not a 64-bit ELF file")?;
    let Some((offset, size)) = reservation(data, SECTION)? else {
        bail!("the kernel has no {SECTION} section");
    };
    let excluded = offset..offset + size;
    let mut hash = Sha256::new();
    hash.update(file.entry().to_le_bytes());
    // object lists an ELF file's PT_LOAD program headers as its segments.
    for segment in file.segments() {
        let (start, length) = segment.file_range();
        let (start, length) = (usize::try_from(start)?, usize::try_from(length)?);
        let bytes = data.get(start..start + length).context("a segment extends past the end of the file")?;
        hash.update(segment.address().to_le_bytes());
        hash.update(segment.size().to_le_bytes());
        // The reservation's bytes count as zeros, whatever they hold now.
        let mut bytes = bytes.to_vec();
        let overlap = excluded.start.max(start)..excluded.end.min(start + length);
        if !overlap.is_empty() {
            bytes[overlap.start - start..overlap.end - start].fill(0);
        }
        hash.update(&bytes);
    }
    let digest = hash.finalize();
    Ok(BuildId(digest[..ID_LENGTH].try_into().expect("SHA-256 is longer than a build id")))
}

/// What the section of the linked kernel `data` holds, if filled: (id, commit, dirty).
pub fn read(data: &[u8]) -> Result<Option<(BuildId, String, bool)>> {
    let Some((offset, size)) = reservation(data, SECTION)? else {
        return Ok(None);
    };
    let bytes = data.get(offset..offset + size).context("section extends past the end of the file")?;
    Ok(BuildInfo::parse(bytes).map(|info| (info.id, info.commit.to_string(), info.dirty)))
}

/// Writes the build id of `data` and `commit` into its `.klp_build_id`
/// section; returns the id, or `None` when the kernel has no such section.
pub fn fill(data: &mut [u8], commit: &str, dirty: bool) -> Result<Option<BuildId>> {
    let Some((offset, size)) = reservation(data, SECTION)? else {
        return Ok(None);
    };
    let id = compute(data)?;
    let Some(bytes) = (BuildInfo { id, commit, dirty }).encode() else {
        bail!(
            "commit {commit:?} does not fit in {SECTION} (at most {} printable characters)",
            portable::build_id::MAX_COMMIT
        );
    };
    if size != bytes.len() {
        bail!("section {SECTION} holds {size} bytes; the kernel must reserve exactly {}", bytes.len());
    }
    data[offset..offset + size].copy_from_slice(&bytes);
    Ok(Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A little-endian ppc64 executable with one loadable segment: code, then
    /// the `.klp_build_id` reservation (zeros).
    fn kernel(code: &[u8]) -> Vec<u8> {
        use object::write::elf::{FileHeader, ProgramHeader, SectionHeader, Writer};
        let mut out = Vec::new();
        let mut writer = Writer::new(Endianness::Little, true, &mut out);
        writer.reserve_file_header();
        writer.reserve_program_headers(1);
        let name = writer.add_section_name(SECTION.as_bytes());
        let text_name = writer.add_section_name(b".text");
        let text_index = writer.reserve_section_index();
        let build_index = writer.reserve_section_index();
        writer.reserve_shstrtab_section_index();
        let text_offset = writer.reserve(code.len(), 8);
        let build_offset = writer.reserve(portable::build_id::CAPACITY, 8);
        writer.reserve_shstrtab();
        writer.reserve_section_headers();
        let end = build_offset + portable::build_id::CAPACITY;
        writer
            .write_file_header(&FileHeader {
                os_abi: 0,
                abi_version: 0,
                e_type: object::elf::ET_EXEC,
                e_machine: object::elf::EM_PPC64,
                e_entry: 0x400000,
                e_flags: 2,
            })
            .unwrap();
        writer.write_align_program_headers();
        writer.write_program_header(&ProgramHeader {
            p_type: object::elf::PT_LOAD,
            p_flags: object::elf::PF_R | object::elf::PF_X,
            p_offset: text_offset as u64,
            p_vaddr: 0x400000,
            p_paddr: 0,
            p_filesz: (end - text_offset) as u64,
            p_memsz: (end - text_offset) as u64,
            p_align: 8,
        });
        writer.write_align(8);
        writer.write(code);
        writer.write_align(8);
        writer.write(&[0; portable::build_id::CAPACITY]);
        writer.write_shstrtab();
        writer.write_null_section_header();
        let section = |name, offset: usize, size: usize| SectionHeader {
            name: Some(name),
            sh_type: object::elf::SHT_PROGBITS,
            sh_flags: u64::from(object::elf::SHF_ALLOC),
            sh_addr: 0x400000 + (offset - text_offset) as u64,
            sh_offset: offset as u64,
            sh_size: size as u64,
            sh_link: 0,
            sh_info: 0,
            sh_addralign: 8,
            sh_entsize: 0,
        };
        writer.write_section_header(&section(text_name, text_offset, code.len()));
        writer.write_section_header(&section(name, build_offset, portable::build_id::CAPACITY));
        writer.write_shstrtab_section_header();
        let _ = (text_index, build_index);
        out
    }

    #[test]
    fn the_id_covers_the_loaded_bytes_but_not_itself() {
        let mut image = kernel(&[0x60; 64]);
        let before = compute(&image).unwrap();
        let id = fill(&mut image, "6221328", true).unwrap().unwrap();
        assert_eq!(id, before);
        // Filling the section does not change the id, and it reads back.
        assert_eq!(compute(&image).unwrap(), id);
        assert_eq!(read(&image).unwrap(), Some((id, String::from("6221328"), true)));
        // One byte of code more or less is another id.
        let mut other = kernel(&[0x60; 64]);
        let at = other.windows(64).position(|window| window == [0x60; 64]).unwrap();
        other[at + 10] = 0x61;
        assert_ne!(compute(&other).unwrap(), id);
    }

    #[test]
    fn an_unfilled_image_reads_as_none() {
        assert_eq!(read(&kernel(&[0; 16])).unwrap(), None);
        assert!(compute(&[0; 64]).is_err());
    }

    #[test]
    fn the_commit_is_this_repository_s_head() {
        let (recorded, dirty) = source_commit();
        let (commit, digest) = recorded.split_once('+').map_or((recorded.as_str(), None), |(c, d)| (c, Some(d)));
        assert_eq!(commit.len(), 40, "{recorded}");
        assert!(commit.bytes().all(|byte| byte.is_ascii_hexdigit()));
        // A dirty tree adds the digest of its changes, and only a dirty tree.
        assert_eq!(digest.is_some(), dirty, "{recorded}");
        if let Some(digest) = digest {
            assert_eq!(Some(digest.to_string()), work_tree_digest());
            assert_eq!(digest.len(), 12);
        }
    }
}
