//! Why writing or reading a flattened device tree failed.

/// Why a node or property could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdtError {
    /// The buffer has no room left for what was asked.
    BufferTooSmall,
    /// A name is longer than 255 bytes.
    NameTooLong,
    /// A name contains a NUL byte.
    NameContainsNul,
    /// A name is not UTF-8, contains `/`, is empty (only the root has no
    /// name), or is not empty for the root.
    InvalidName,
    /// `end_node` with no open node, or `finish` with a node still open.
    UnbalancedNodes,
    /// `finish` before any node was written.
    MissingRoot,
    /// A second node at the top level: a tree has exactly one root.
    MultipleRoots,
    /// A property outside of any node.
    PropertyOutsideNode,
    /// A property after a child node: a node's properties come before its children.
    PropertyAfterChild,
    /// Nodes nested more than 63 deep.
    TooDeep,
    /// A value or the whole blob exceeds the format's 32-bit sizes.
    TooLarge,
}

impl core::fmt::Display for FdtError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        formatter.write_str(match self {
            FdtError::BufferTooSmall => "device tree buffer too small",
            FdtError::NameTooLong => "device tree name longer than 255 bytes",
            FdtError::NameContainsNul => "device tree name contains a NUL byte",
            FdtError::InvalidName => "device tree name is empty, misplaced, not UTF-8 or contains '/'",
            FdtError::UnbalancedNodes => "device tree nodes begun and ended do not match",
            FdtError::MissingRoot => "device tree has no root node",
            FdtError::MultipleRoots => "device tree has a second root node",
            FdtError::PropertyOutsideNode => "device tree property outside any node",
            FdtError::PropertyAfterChild => "device tree property after a child node",
            FdtError::TooDeep => "device tree nodes nested too deep",
            FdtError::TooLarge => "device tree value or blob beyond 4 GiB",
        })
    }
}

impl core::error::Error for FdtError {}

/// Why a blob is not a usable flattened device tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceTreeError {
    /// The bytes end before the header does, or before the size it claims.
    Truncated,
    /// The first word is not the FDT magic number 0xd00dfeed.
    BadMagic,
    /// The format version (this one) is older than 17, or the blob needs a reader newer than 17.
    UnsupportedVersion(u32),
    /// A block the header names lies outside the blob.
    BlockOutOfBounds,
    /// The structure block is malformed `offset` bytes from its start.
    BadStructure {
        /// Offset just past the token or field found wrong.
        offset: usize,
        /// What is wrong there.
        reason: &'static str,
    },
    /// Nodes nest deeper than 63 levels.
    TooDeep,
}

impl core::fmt::Display for DeviceTreeError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DeviceTreeError::Truncated => write!(formatter, "device tree truncated"),
            DeviceTreeError::BadMagic => write!(formatter, "not a flattened device tree (bad magic)"),
            DeviceTreeError::UnsupportedVersion(version) => {
                write!(formatter, "device tree version {version} not supported")
            }
            DeviceTreeError::BlockOutOfBounds => write!(formatter, "device tree block outside the blob"),
            DeviceTreeError::BadStructure { offset, reason } => {
                write!(formatter, "device tree structure block at {offset:#x}: {reason}")
            }
            DeviceTreeError::TooDeep => write!(formatter, "device tree nodes nested too deep"),
        }
    }
}

impl core::error::Error for DeviceTreeError {}

impl From<fdt::FdtError> for DeviceTreeError {
    fn from(error: fdt::FdtError) -> Self {
        match error {
            fdt::FdtError::BadMagic => DeviceTreeError::BadMagic,
            _ => DeviceTreeError::Truncated,
        }
    }
}
