//! The signed module file: object bytes, a 64-byte ed25519 signature, a 16-byte trailer.
//!
//! ```text
//! object (N bytes) | signature (64 bytes) | b"KLPSIG01" | N as u64, little-endian
//! ```
//!
//! This file only splits; checking the signature (over the object bytes) is
//! the caller's job.

use super::ModuleError;

/// The magic bytes that start the trailer.
pub const SIGNED_MAGIC: [u8; 8] = *b"KLPSIG01";
/// Bytes in the ed25519 signature.
pub const SIGNATURE_SIZE: usize = 64;
/// Bytes in the trailer: magic and object length.
pub const TRAILER_SIZE: usize = 16;

/// Splits a signed module file into the object bytes and the 64-byte signature that follows
/// them. Verification is the caller's.
pub fn split_signed(file: &[u8]) -> Result<(&[u8], &[u8; SIGNATURE_SIZE]), ModuleError> {
    let Some(object_end) = file.len().checked_sub(SIGNATURE_SIZE + TRAILER_SIZE) else {
        return Err(ModuleError::SignedFile("shorter than a signature and its trailer"));
    };
    let (object, rest) = file.split_at(object_end);
    let (signature, trailer) = rest.split_at(SIGNATURE_SIZE);
    if trailer[..8] != SIGNED_MAGIC {
        return Err(ModuleError::SignedFile("no KLPSIG01 trailer"));
    }
    let mut length = [0; 8];
    length.copy_from_slice(&trailer[8..]);
    if u64::from_le_bytes(length) != object.len() as u64 {
        return Err(ModuleError::SignedFile("the trailer's object length does not match the file"));
    }
    let signature = signature.try_into().map_err(|_| ModuleError::SignedFile("signature size"))?;
    Ok((object, signature))
}

/// The trailer that ends a signed file whose object is `object_length` bytes (for the signer).
pub fn signed_trailer(object_length: usize) -> [u8; TRAILER_SIZE] {
    let mut trailer = [0; TRAILER_SIZE];
    trailer[..8].copy_from_slice(&SIGNED_MAGIC);
    trailer[8..].copy_from_slice(&(object_length as u64).to_le_bytes());
    trailer
}
