//! Reading fixed-size integers out of a byte table that may be short or malformed.
//!
//! Every reader returns `None` rather than panicking when the integer does
//! not fit inside `bytes` (an offset near `usize::MAX` included), so a table
//! the kernel did not write itself can be parsed without trusting it.

/// The little-endian 32-bit word at `offset`, if `bytes` holds all of it.
pub fn little_endian_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(offset..offset.checked_add(4)?)?.try_into().ok()?))
}

/// The little-endian 64-bit word at `offset`, if `bytes` holds all of it.
pub fn little_endian_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(offset..offset.checked_add(8)?)?.try_into().ok()?))
}

/// The big-endian 32-bit word at `offset`, if `bytes` holds all of it.
pub fn big_endian_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_be_bytes(bytes.get(offset..offset.checked_add(4)?)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_inside_the_bytes_are_read_in_their_byte_order() {
        let bytes = [1, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(little_endian_u32(&bytes, 0), Some(0x0403_0201));
        assert_eq!(big_endian_u32(&bytes, 1), Some(0x0203_0405));
        assert_eq!(little_endian_u64(&bytes, 1), Some(0x0908_0706_0504_0302));
    }

    #[test]
    fn words_that_do_not_fit_are_none() {
        let bytes = [0u8; 8];
        assert_eq!(little_endian_u32(&bytes, 5), None);
        assert_eq!(little_endian_u64(&bytes, 1), None);
        assert_eq!(big_endian_u32(&bytes, usize::MAX - 1), None);
        assert_eq!(little_endian_u64(&bytes, usize::MAX), None);
    }
}
