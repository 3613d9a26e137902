//! The Open Firmware client interface, used once at boot to flatten the device tree.
//!
//! QEMU pseries hands the kernel no flattened tree, only the client interface
//! entry (r5). Like Linux's prom_init, the kernel walks the firmware's tree
//! with `finddevice`/`child`/`peer`/`nextprop`/`getprop` and writes a
//! flattened copy, before it takes over the low memory the firmware lives in.
use core::cell::{Cell, UnsafeCell};
use portable::devicetree::{FdtError, FdtWriter};

/// The longest property value the walk copies (longer ones are skipped and counted).
pub const PROPERTY_CAPACITY: usize = 16 * 1024;
/// Room for a property name and its NUL. IEEE 1275 allows 31 characters, but
/// QEMU has longer names ("ibm,query-interrupt-source-number"); a truncated
/// name would end the `nextprop` walk early, as Linux's 64 bytes avoid too.
const NAME_CAPACITY: usize = 64;
/// Deepest node nesting accepted.
const MAXIMUM_DEPTH: usize = 16;

/// A phandle: the firmware's handle for a node.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Phandle(u32);

/// Why flattening failed.
#[derive(Debug)]
pub enum FlattenError {
    /// A client interface call failed.
    Firmware(&'static str),
    /// The flattened tree did not fit or was malformed.
    Writer(FdtError),
    /// The tree is deeper than MAXIMUM_DEPTH.
    TooDeep,
}

impl core::fmt::Display for FlattenError {
    fn fmt(&self, formatter: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            FlattenError::Firmware(what) => write!(formatter, "Open Firmware: {what}"),
            FlattenError::Writer(error) => write!(formatter, "writing the flattened tree: {error}"),
            FlattenError::TooDeep => write!(formatter, "the firmware tree is deeper than {MAXIMUM_DEPTH} levels"),
        }
    }
}

impl From<FdtError> for FlattenError {
    fn from(error: FdtError) -> Self {
        FlattenError::Writer(error)
    }
}

/// The firmware's client interface entry point.
pub struct OpenFirmware {
    entry: u64,
    /// Properties too long to copy so far.
    skipped: Cell<usize>,
}

/// Scratch for property values: boot runs on one CPU, before threads.
struct Scratch(UnsafeCell<[u8; PROPERTY_CAPACITY]>);
// Safety: used only by the boot CPU during `flatten`.
unsafe impl Sync for Scratch {}
static PROPERTY: Scratch = Scratch(UnsafeCell::new([0; PROPERTY_CAPACITY]));

impl OpenFirmware {
    /// Wraps the entry the firmware passed in r5.
    pub fn new(entry: u64) -> Self {
        OpenFirmware { entry, skipped: Cell::new(0) }
    }

    /// Calls `service` (NUL-terminated) with `arguments`; returns the first result.
    fn call(&self, service: &[u8], arguments: &[u32]) -> Result<u32, &'static str> {
        // Big-endian cells: service, argument count, result count, arguments, results.
        let mut block = [0u32; 16];
        let results = 1;
        block[0] = (service.as_ptr() as u64 as u32).to_be();
        block[1] = (arguments.len() as u32).to_be();
        block[2] = (results as u32).to_be();
        for (cell, argument) in block[3..].iter_mut().zip(arguments) {
            *cell = argument.to_be();
        }
        // Safety: the block and every pointer in it are below 4 GiB (the kernel
        // runs at 0x400000), interrupts are off during boot, and the firmware
        // only writes the result cells and the buffers we passed.
        let status = unsafe { boot::enter_openfirmware(block.as_mut_ptr() as u64, self.entry) };
        if status != 0 {
            return Err("client interface call failed");
        }
        Ok(u32::from_be(block[3 + arguments.len()]))
    }

    fn finddevice(&self, path: &[u8]) -> Result<Phandle, FlattenError> {
        match self.call(b"finddevice\0", &[path.as_ptr() as u32]) {
            Ok(handle) if handle != 0 && handle != u32::MAX => Ok(Phandle(handle)),
            _ => Err(FlattenError::Firmware("finddevice failed")),
        }
    }

    /// `child` or `peer`: 0 (or -1) means none.
    fn relative(&self, service: &[u8], node: Phandle) -> Option<Phandle> {
        match self.call(service, &[node.0]) {
            Ok(handle) if handle != 0 && handle != u32::MAX => Some(Phandle(handle)),
            _ => None,
        }
    }

    /// The node's name with its unit address: the last component of its path.
    fn node_name<'a>(&self, node: Phandle, buffer: &'a mut [u8; 256]) -> &'a [u8] {
        let length = self
            .call(b"package-to-path\0", &[node.0, buffer.as_mut_ptr() as u32, buffer.len() as u32])
            .unwrap_or(0) as usize;
        let path = &buffer[..length.min(buffer.len())];
        let path = path.split(|&byte| byte == 0).next().unwrap_or(&[]);
        match path.iter().rposition(|&byte| byte == b'/') {
            Some(slash) => &path[slash + 1..],
            None => path,
        }
    }

    /// Writes the whole firmware tree into `writer`. Returns how many
    /// properties were left out for being longer than PROPERTY_CAPACITY.
    pub fn flatten(&self, writer: &mut FdtWriter) -> Result<usize, FlattenError> {
        let root = self.finddevice(b"/\0")?;
        self.flatten_node(root, writer, 0, true)?;
        Ok(self.skipped.get())
    }

    fn flatten_node(
        &self,
        node: Phandle,
        writer: &mut FdtWriter,
        depth: usize,
        root: bool,
    ) -> Result<(), FlattenError> {
        if depth > MAXIMUM_DEPTH {
            return Err(FlattenError::TooDeep);
        }
        let mut path = [0u8; 256];
        let name = if root { &[][..] } else { self.node_name(node, &mut path) };
        writer.begin_node(name)?;
        let aliases = depth == 1 && name == b"aliases";
        self.flatten_properties(node, writer, aliases)?;
        let mut child = self.relative(b"child\0", node);
        while let Some(current) = child {
            self.flatten_node(current, writer, depth + 1, false)?;
            child = self.relative(b"peer\0", current);
        }
        writer.end_node()?;
        Ok(())
    }

    /// Copies a node's properties. In /aliases only paths are kept: a flattened
    /// tree resolves aliases as paths, and SLOF keeps other values there.
    fn flatten_properties(&self, node: Phandle, writer: &mut FdtWriter, aliases: bool) -> Result<(), FlattenError> {
        let mut previous = [0u8; NAME_CAPACITY];
        let mut name = [0u8; NAME_CAPACITY];
        let mut has_phandle = false;
        loop {
            name.fill(0);
            let found =
                self.call(b"nextprop\0", &[node.0, previous.as_ptr() as u32, name.as_mut_ptr() as u32]).unwrap_or(0);
            if found != 1 {
                break;
            }
            let name_length = name.iter().position(|&byte| byte == 0).unwrap_or(NAME_CAPACITY - 1);
            let property_name = &name[..name_length];
            has_phandle |= property_name == b"phandle";
            // Version 17 trees carry the name in the node itself; Linux drops
            // "name" too (and in /aliases it would not be a path).
            if property_name == b"name" {
                previous = name;
                continue;
            }
            let length = self.call(b"getproplen\0", &[node.0, name.as_ptr() as u32]).unwrap_or(u32::MAX);
            // Safety: boot is single-threaded; nothing else holds the scratch buffer.
            let value = unsafe { &mut *PROPERTY.0.get() };
            if (length as usize) <= value.len() {
                let length = length as usize;
                self.call(b"getprop\0", &[node.0, name.as_ptr() as u32, value.as_mut_ptr() as u32, length as u32])
                    .map_err(FlattenError::Firmware)?;
                if !aliases || value[..length].starts_with(b"/") {
                    writer.property(property_name, &value[..length])?;
                }
            } else if length != u32::MAX {
                self.skipped.set(self.skipped.get() + 1);
            }
            previous = name;
        }
        if !has_phandle && !aliases {
            writer.property(b"phandle", &node.0.to_be_bytes())?;
        }
        Ok(())
    }
}
