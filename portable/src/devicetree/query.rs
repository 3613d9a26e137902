//! Answers about the machine (memory, CPUs, RTAS tokens, boot arguments) from a flattened device tree.

use fdt::node::FdtNode;

use super::{DeviceTreeError, validate};

/// A checked flattened device tree and the questions the kernel asks of it.
#[derive(Debug, Clone, Copy)]
pub struct DeviceTree<'a> {
    tree: fdt::Fdt<'a>,
}

impl<'a> DeviceTree<'a> {
    /// Checks the whole blob at the start of `bytes` and wraps it; bytes past
    /// the size in its header are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, DeviceTreeError> {
        let blob = validate::check(bytes)?;
        Ok(DeviceTree { tree: fdt::Fdt::new(blob)? })
    }

    /// The underlying `fdt` crate view, for questions not answered here. Its
    /// shortcuts that `expect` a node (`chosen`, `cpus`, `memory`) still panic
    /// when that node is missing; `find_node` does not.
    pub fn raw(&self) -> &fdt::Fdt<'a> {
        &self.tree
    }

    /// Base and size of the memory at address 0: on pseries the real-mode
    /// area (RMA), the only memory usable with translation off.
    pub fn real_mode_memory(&self) -> Option<(u64, u64)> {
        self.memory_nodes().filter_map(|node| reg_entries(node).next()).find(|&(base, _)| base == 0)
    }

    /// Base and size of every `reg` entry of every node whose `device_type` is `memory`.
    pub fn memory_regions(&self) -> impl Iterator<Item = (u64, u64)> {
        self.memory_nodes().flat_map(reg_entries)
    }

    /// The RTAS token for the call `name` (such as `power-off`), from `/rtas`.
    pub fn rtas_token(&self, name: &str) -> Option<u32> {
        let value = self.tree.find_node("/rtas")?.property(name)?.value;
        Some(u32::from_be_bytes(value.try_into().ok()?))
    }

    /// Number of hardware threads: each `cpu` node under `/cpus` counts the
    /// threads in its `ibm,ppc-interrupt-server#s`, or one without it.
    pub fn cpu_count(&self) -> usize {
        self.cpu_nodes().map(thread_count).sum()
    }

    /// Every hardware thread under `/cpus`, in tree order: each `cpu` node's
    /// `reg` and, one entry per thread, its `ibm,ppc-interrupt-server#s`
    /// (a node without that property is one thread whose server is its `reg`).
    /// The server number is what RTAS `start-cpu` and the XICS hcalls take.
    pub fn cpu_threads(&self) -> impl Iterator<Item = CpuThread> + '_ {
        self.cpu_nodes().flat_map(|node| {
            let reg = node.property("reg").and_then(|property| number(property.value)).unwrap_or(0) as u32;
            let servers = node.property("ibm,ppc-interrupt-server#s").map_or(&[][..], |property| property.value);
            let count = (servers.len() / 4).max(1);
            (0..count).map(move |thread| {
                let server = servers
                    .get(thread * 4..thread * 4 + 4)
                    .and_then(|cell| cell.try_into().ok())
                    .map_or(reg, u32::from_be_bytes);
                CpuThread { reg, thread: thread as u32, server }
            })
        })
    }

    /// Which interrupt controller the tree describes: the root's child
    /// `interrupt-controller` node's `compatible` (XICS is "IBM,ppc-xicp",
    /// XIVE is "ibm,power-ivpe").
    pub fn interrupt_controller(&self) -> InterruptController {
        let root = self.tree.find_node("/");
        let nodes = root.into_iter().flat_map(|root| root.children());
        for node in nodes.filter(|node| node.name.split('@').next() == Some("interrupt-controller")) {
            let compatible = node.property("compatible").map_or(&[][..], |property| property.value);
            let mut names = compatible.split(|&byte| byte == 0).filter(|name| !name.is_empty());
            if names.clone().any(|name| name == b"IBM,ppc-xicp") {
                return InterruptController::Xics;
            }
            if names.any(|name| name == b"ibm,power-ivpe") {
                return InterruptController::Xive;
            }
        }
        InterruptController::None
    }

    /// Timebase ticks per second, from the first CPU node (or from `/cpus`).
    pub fn timebase_frequency(&self) -> Option<u64> {
        let name = "timebase-frequency";
        let property = match self.cpu_nodes().next()?.property(name) {
            Some(property) => property,
            None => self.tree.find_node("/cpus")?.property(name)?,
        };
        number(property.value)
    }

    /// The kernel command line: `bootargs` of `/chosen`.
    pub fn bootargs(&self) -> Option<&'a str> {
        string(self.tree.find_node("/chosen")?.property("bootargs")?.value)
    }

    /// The machine model: `model` of the root node.
    pub fn model(&self) -> Option<&'a str> {
        string(self.tree.find_node("/")?.property("model")?.value)
    }

    /// Every node whose `device_type` is `memory`.
    fn memory_nodes(&self) -> impl Iterator<Item = FdtNode<'_, 'a>> {
        self.tree.all_nodes().filter(|&node| device_type(node) == Some("memory"))
    }

    /// The children of `/cpus` whose `device_type` is `cpu`.
    fn cpu_nodes(&self) -> impl Iterator<Item = FdtNode<'_, 'a>> {
        let cpus = self.tree.find_node("/cpus");
        cpus.into_iter().flat_map(|cpus| cpus.children()).filter(|&node| device_type(node) == Some("cpu"))
    }
}

/// One hardware thread of a `cpu` node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuThread {
    /// The node's `reg` (its first thread's number).
    pub reg: u32,
    /// Which of the node's threads (0 for the first).
    pub thread: u32,
    /// Its interrupt server number: the id RTAS and the interrupt controller know it by.
    pub server: u32,
}

/// The interrupt controller the device tree describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InterruptController {
    /// XICS (`IBM,ppc-xicp`), driven by hcalls: what the kernel speaks.
    Xics,
    /// XIVE (`ibm,power-ivpe`), which the kernel does not drive.
    Xive,
    /// No interrupt controller node the kernel knows.
    None,
}

/// The node's `device_type`.
fn device_type<'a>(node: FdtNode<'_, 'a>) -> Option<&'a str> {
    string(node.property("device_type")?.value)
}

/// Threads of a CPU node: one interrupt server number each.
fn thread_count(node: FdtNode<'_, '_>) -> usize {
    let servers = node.property("ibm,ppc-interrupt-server#s").map_or(0, |property| property.value.len() / 4);
    servers.max(1)
}

/// The `reg` entries of `node` as (address, size), in its parent's
/// `#address-cells` and `#size-cells`; stops at the first entry whose
/// address or size is not one or two cells.
fn reg_entries<'a>(node: FdtNode<'_, 'a>) -> impl Iterator<Item = (u64, u64)> + 'a {
    let entries = node.raw_reg().into_iter().flatten();
    entries.map_while(|entry| Some((number(entry.address)?, number(entry.size)?)))
}

/// A big-endian number of one or two cells.
fn number(bytes: &[u8]) -> Option<u64> {
    match bytes.len() {
        4 => Some(u32::from_be_bytes(bytes.try_into().ok()?).into()),
        8 => Some(u64::from_be_bytes(bytes.try_into().ok()?)),
        _ => None,
    }
}

/// The first string of a string property, without its NUL.
fn string(bytes: &[u8]) -> Option<&str> {
    let text = bytes.split(|&byte| byte == 0).next()?;
    core::str::from_utf8(text).ok()
}
