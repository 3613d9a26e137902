//! Patch module signatures: the project's ed25519 key pair and the signed `.klp` layout.
//!
//! ```text
//! object (N bytes) | ed25519 signature of the object (64) | "KLPSIG01" | N as u64 LE
//! ```
//!
//! The trailer at the very end lets the kernel find the signature without
//! parsing the object. The private key is `.keys/patch-signing.key` (the 32-byte
//! ed25519 seed), the public key `.keys/patch-signing.pub` (32 bytes), which the
//! kernel build embeds; both are made on first use and never leave the machine
//! (`.keys` is git-ignored).

use std::fs;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ed25519_compact::{KeyPair, PublicKey, Seed, Signature};

use crate::workspace_root;

/// Ends every signed module, before the object's length.
pub const TRAILER_MAGIC: &[u8; 8] = b"KLPSIG01";
/// The ed25519 signature's length.
pub const SIGNATURE_LENGTH: usize = Signature::BYTES;
/// Magic and object length.
pub const TRAILER_LENGTH: usize = 16;

/// The folder that holds the key pair.
pub fn key_directory() -> PathBuf {
    workspace_root().join(".keys")
}

/// The public key file the kernel build embeds (absolute path).
pub fn public_key_path() -> PathBuf {
    key_directory().join("patch-signing.pub")
}

/// The project's signing key pair, made on first use.
pub fn ensure_key_pair() -> Result<KeyPair> {
    ensure_key_pair_in(&key_directory())
}

/// The key pair in `directory` (`patch-signing.key`, `patch-signing.pub`): read,
/// or generated when the private key does not exist. The public key file is
/// (re)written from the private key when missing; one that does not match is an error.
pub fn ensure_key_pair_in(directory: &Path) -> Result<KeyPair> {
    let private = directory.join("patch-signing.key");
    let public = directory.join("patch-signing.pub");
    let seed = match fs::read(&private) {
        Ok(seed) => seed,
        Err(error) if error.kind() == ErrorKind::NotFound => create_private_key(directory, &private)?,
        Err(error) => return Err(error).with_context(|| format!("reading {}", private.display())),
    };
    let seed = Seed::from_slice(&seed).map_err(|_| {
        anyhow::anyhow!("{} must hold a 32-byte ed25519 seed, not {} bytes", private.display(), seed.len())
    })?;
    let pair = KeyPair::from_seed(seed);
    match fs::read(&public) {
        Ok(bytes) if bytes == pair.pk.as_slice() => {}
        Ok(_) => bail!(
            "{} does not belong to {}: delete the public key to derive it again, or both to make a new pair",
            public.display(),
            private.display()
        ),
        Err(error) if error.kind() == ErrorKind::NotFound => {
            fs::write(&public, pair.pk.as_slice()).with_context(|| format!("writing {}", public.display()))?;
            eprintln!("patch signing: public key {}", public.display());
        }
        Err(error) => return Err(error).with_context(|| format!("reading {}", public.display())),
    }
    Ok(pair)
}

/// Writes a fresh seed to `private` (mode 0600) unless another process just did; returns the seed.
fn create_private_key(directory: &Path, private: &Path) -> Result<Vec<u8>> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)
        .with_context(|| format!("creating {}", directory.display()))?;
    let mut seed = [0; Seed::BYTES];
    fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut seed))
        .context("reading /dev/urandom for a new signing key")?;
    // Written whole under a temporary name, then linked into place: a concurrent
    // xtask never sees half a key, and if one wins the race the other uses its key.
    let temporary = directory.join(format!("patch-signing.key.{}", std::process::id()));
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| std::io::Write::write_all(&mut file, &seed))
        .with_context(|| format!("writing {}", temporary.display()))?;
    let linked = fs::hard_link(&temporary, private);
    let _ = fs::remove_file(&temporary);
    match linked {
        Ok(()) => {
            eprintln!("patch signing: generated a new key pair, private key {}", private.display());
            let _ = fs::remove_file(private.with_extension("pub"));
            Ok(seed.to_vec())
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            fs::read(private).with_context(|| format!("reading {}", private.display()))
        }
        Err(error) => Err(error).with_context(|| format!("creating {}", private.display())),
    }
}

/// `object`, its signature and the trailer: the bytes of a `.klp` file.
pub fn sign(object: &[u8], pair: &KeyPair) -> Vec<u8> {
    let signature = pair.sk.sign(object, None);
    let mut signed = Vec::with_capacity(object.len() + SIGNATURE_LENGTH + TRAILER_LENGTH);
    signed.extend_from_slice(object);
    signed.extend_from_slice(signature.as_slice());
    signed.extend_from_slice(TRAILER_MAGIC);
    signed.extend_from_slice(&(object.len() as u64).to_le_bytes());
    signed
}

/// Splits a `.klp` file into its object and signature, checking the trailer.
pub fn split(signed: &[u8]) -> Result<(&[u8], Signature)> {
    let Some(rest) = signed.len().checked_sub(TRAILER_LENGTH) else {
        bail!("{} bytes are too short for a signed module", signed.len());
    };
    let (body, trailer) = signed.split_at(rest);
    if &trailer[..8] != TRAILER_MAGIC {
        bail!("no KLPSIG01 trailer: not a signed module");
    }
    let length = u64::from_le_bytes(trailer[8..].try_into().expect("8 bytes"));
    if length.checked_add(SIGNATURE_LENGTH as u64) != Some(body.len() as u64) {
        bail!("the trailer gives an object of {length} bytes, but {} bytes precede the signature", body.len());
    }
    let (object, signature) = body.split_at(body.len() - SIGNATURE_LENGTH);
    Ok((object, Signature::from_slice(signature).expect("64 bytes")))
}

/// The object inside a `.klp` file, if its signature verifies with `public_key`.
pub fn verify<'a>(signed: &'a [u8], public_key: &PublicKey) -> Result<&'a [u8]> {
    let (object, signature) = split(signed)?;
    public_key.verify(object, &signature).map_err(|_| anyhow::anyhow!("the signature does not verify"))?;
    Ok(object)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(byte: u8) -> KeyPair {
        KeyPair::from_seed(Seed::new([byte; 32]))
    }

    #[test]
    fn signed_module_layout() {
        let object = b"\x7fELF pretend object";
        let signed = sign(object, &pair(1));
        assert_eq!(signed.len(), object.len() + 64 + 16);
        assert_eq!(&signed[..object.len()], object);
        assert_eq!(&signed[signed.len() - 16..signed.len() - 8], b"KLPSIG01");
        assert_eq!(&signed[signed.len() - 8..], &(object.len() as u64).to_le_bytes());
        let signature = &signed[object.len()..object.len() + 64];
        assert!(pair(1).pk.verify(object, &Signature::from_slice(signature).unwrap()).is_ok());
        // ed25519 signatures are deterministic: the same object signs the same way.
        assert_eq!(sign(object, &pair(1)), signed);
    }

    #[test]
    fn signatures_verify_only_with_their_key_and_bytes() {
        let object: Vec<u8> = (0..=255).cycle().take(3000).collect();
        let signed = sign(&object, &pair(7));
        assert_eq!(verify(&signed, &pair(7).pk).unwrap(), &object[..]);
        assert!(verify(&signed, &pair(8).pk).unwrap_err().to_string().contains("does not verify"));
        let mut tampered = signed.clone();
        tampered[100] ^= 1;
        assert!(verify(&tampered, &pair(7).pk).is_err());
        let mut bad_signature = signed.clone();
        bad_signature[object.len() + 5] ^= 1;
        assert!(verify(&bad_signature, &pair(7).pk).is_err());
    }

    #[test]
    fn malformed_trailers_are_refused() {
        let signed = sign(b"object", &pair(2));
        assert!(split(&signed[..10]).unwrap_err().to_string().contains("too short"));
        assert!(split(&signed[..signed.len() - 1]).is_err());
        let mut wrong_magic = signed.clone();
        let at = wrong_magic.len() - 9;
        wrong_magic[at] = b'2';
        assert!(split(&wrong_magic).unwrap_err().to_string().contains("KLPSIG01"));
        let mut wrong_length = signed.clone();
        let at = wrong_length.len() - 8;
        wrong_length[at] = 7;
        assert!(split(&wrong_length).unwrap_err().to_string().contains("trailer gives"));
        let mut huge_length = signed;
        let at = huge_length.len() - 8;
        huge_length[at..].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(split(&huge_length).is_err());
    }

    #[test]
    fn key_pair_is_made_once_and_kept() {
        let directory = std::env::temp_dir().join(format!("xtask-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&directory);
        let first = ensure_key_pair_in(&directory).unwrap();
        assert_eq!(fs::read(directory.join("patch-signing.pub")).unwrap(), first.pk.as_slice());
        assert_eq!(fs::read(directory.join("patch-signing.key")).unwrap().len(), 32);
        let mode = fs::metadata(directory.join("patch-signing.key")).unwrap().permissions();
        assert_eq!(std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777, 0o600);
        assert_eq!(ensure_key_pair_in(&directory).unwrap().pk, first.pk);
        // A lost public key is derived again; a foreign one is an error.
        fs::remove_file(directory.join("patch-signing.pub")).unwrap();
        assert_eq!(ensure_key_pair_in(&directory).unwrap().pk, first.pk);
        fs::write(directory.join("patch-signing.pub"), [0; 32]).unwrap();
        assert!(ensure_key_pair_in(&directory).unwrap_err().to_string().contains("does not belong"));
        fs::remove_dir_all(&directory).unwrap();
    }
}
