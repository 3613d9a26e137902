//! Per patched function: the stack of replacements and the IPMODIFY ftrace handler that redirects calls.
//!
//! Every kernel function replaced by at least one enabled patch has one
//! `PatchedFunction`, which owns one `FtraceOps` registered on that function
//! alone. The handler reads the newest replacement and sets `nip` to its
//! global entry point with `FtraceRegs::REDIRECT`, so `ftrace_caller` leaves
//! through `livepatch_handler` (the "who changed nip" test: only this handler
//! sets the flag, so another NIP-modifying handler is never taken for a
//! livepatch).
use crate::trace::{self, Filter, FtraceError, FtraceOps, FtraceRegs, OpsFlags};
use alloc::boxed::Box;
use alloc::vec::Vec;
use core::sync::atomic::{AtomicU64, Ordering};
use macros::notrace;

/// One replaced function.
pub struct PatchedFunction {
    /// The original function's global entry point.
    pub old_address: u64,
    /// (patch id, replacement global entry), oldest first; the last one runs.
    pub stack: Vec<(u64, u64)>,
    /// The replacement calls go to now, read by the handler without locks.
    target: AtomicU64,
    /// Leaked while registered; reclaimed after unregistering.
    ops: &'static FtraceOps,
}

/// The ftrace handler of every patched function.
#[notrace]
extern "C" fn livepatch_ftrace_handler(_ip: u64, _parent_ip: u64, ops: &FtraceOps, regs: &mut FtraceRegs) {
    let function = ops.private.load(Ordering::Acquire) as *const PatchedFunction;
    // Safety: set before registration, cleared only after unregistration.
    let target = unsafe { (*function).target.load(Ordering::Acquire) };
    regs.regs.nip = target;
    regs.flags |= FtraceRegs::REDIRECT;
}

impl PatchedFunction {
    /// Starts redirecting `old_address` to `new_address` for patch `patch`.
    pub fn install(old_address: u64, patch: u64, new_address: u64) -> Result<Box<PatchedFunction>, FtraceError> {
        let ops: &'static FtraceOps = Box::leak(Box::new(FtraceOps::new(
            "livepatch",
            livepatch_ftrace_handler,
            OpsFlags::IPMODIFY.union(OpsFlags::RECURSION_SAFE),
        )));
        let function = Box::new(PatchedFunction {
            old_address,
            stack: alloc::vec![(patch, new_address)],
            target: AtomicU64::new(new_address),
            ops,
        });
        ops.private.store(&*function as *const PatchedFunction as usize, Ordering::Release);
        if let Err(error) = trace::register(ops, Filter::Addresses(&[old_address])) {
            // Safety: never registered, so nothing else holds it.
            drop(unsafe { Box::from_raw(ops as *const FtraceOps as *mut FtraceOps) });
            return Err(error);
        }
        Ok(function)
    }

    /// Makes `new_address` (patch `patch`) the replacement that runs.
    pub fn push(&mut self, patch: u64, new_address: u64) {
        self.stack.push((patch, new_address));
        self.target.store(new_address, Ordering::Release);
    }

    /// The patch whose replacement runs now.
    pub fn topmost_patch(&self) -> u64 {
        self.stack.last().map_or(0, |(patch, _)| *patch)
    }

    /// Drops the newest replacement; the previous one (if any) runs again.
    /// Returns false when none is left (the caller then calls `remove`).
    pub fn pop(&mut self) -> bool {
        self.stack.pop();
        match self.stack.last() {
            Some((_, previous)) => {
                self.target.store(*previous, Ordering::Release);
                true
            }
            None => false,
        }
    }

    /// Stops redirecting: the original function runs again. On failure the
    /// function comes back untouched, still redirecting.
    pub fn remove(self: Box<Self>) -> Result<(), (Box<Self>, FtraceError)> {
        if let Err(error) = trace::unregister(self.ops) {
            return Err((self, error));
        }
        // Safety: unregistered: no handler can reach the ops any more.
        drop(unsafe { Box::from_raw(self.ops as *const FtraceOps as *mut FtraceOps) });
        Ok(())
    }

    /// The function's address for the `klp list` view.
    pub fn current_target(&self) -> u64 {
        self.target.load(Ordering::Acquire)
    }
}
