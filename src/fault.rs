//! Storage fault injection, for tests: makes the Nth write, sync or segment roll of the
//! calling thread fail with a chosen errno (ENOSPC, EIO, EPERM, ...), so the tests of the
//! appender, the results writer and recovery can drive every failure path without a full
//! disk.
//!
//! The log and the aggregates writer call [`check`] before each write, sync and roll. In
//! builds other than `cfg(test)` it is an empty inline function: the fault layer costs
//! nothing in the appliance. A plan is per thread, so tests running side by side do not
//! see each other's faults; what another thread does (the background flusher) is not
//! affected.

#![forbid(unsafe_code)]

use std::io;

/// A storage operation that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A write of bytes into a file (log segment, aggregates file).
    Write,
    /// A flush to the disk (msync, fsync, fdatasync).
    Sync,
    /// Making a new log segment (after its file exists: a failure must clean it up).
    Roll,
}

/// Fails the calling thread's next `op` when a test plan says so.
#[cfg(not(test))]
#[inline(always)]
pub fn check(_op: Op) -> io::Result<()> {
    Ok(())
}

/// Fails the calling thread's next `op` when a test plan says so.
#[cfg(test)]
pub fn check(op: Op) -> io::Result<()> {
    plan::check(op)
}

#[cfg(test)]
pub use plan::{Fault, arm, clear, hits};

#[cfg(test)]
mod plan {
    use std::cell::RefCell;
    use std::io;

    use super::Op;

    /// One planned fault: skip `after` calls of `op`, then fail the next `times` with `errno`.
    #[derive(Debug, Clone, Copy)]
    pub struct Fault {
        /// The operation.
        pub op: Op,
        /// Calls of `op` that succeed first.
        pub after: u32,
        /// Calls that then fail (`u32::MAX`: until cleared).
        pub times: u32,
        /// The error they fail with.
        pub errno: i32,
    }

    thread_local! {
        static PLAN: RefCell<(Vec<Fault>, u64)> = const { RefCell::new((Vec::new(), 0)) };
    }

    /// Adds `fault` to the calling thread's plan.
    pub fn arm(fault: Fault) {
        PLAN.with(|p| p.borrow_mut().0.push(fault));
    }

    /// Removes every planned fault of the calling thread.
    pub fn clear() {
        PLAN.with(|p| p.borrow_mut().0.clear());
    }

    /// How many calls the plan has failed on this thread so far.
    pub fn hits() -> u64 {
        PLAN.with(|p| p.borrow().1)
    }

    pub(super) fn check(op: Op) -> io::Result<()> {
        PLAN.with(|p| {
            let mut p = p.borrow_mut();
            let (faults, hits) = &mut *p;
            let Some(f) = faults.iter_mut().find(|f| f.op == op && f.times > 0) else {
                return Ok(());
            };
            if f.after > 0 {
                f.after -= 1;
                return Ok(());
            }
            if f.times != u32::MAX {
                f.times -= 1;
            }
            *hits += 1;
            Err(io::Error::from_raw_os_error(f.errno))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_fault_skips_its_first_calls_then_fails_its_count_then_passes() {
        clear();
        arm(Fault {
            op: Op::Write,
            after: 2,
            times: 2,
            errno: libc::ENOSPC,
        });
        assert!(check(Op::Sync).is_ok());
        assert!(check(Op::Write).is_ok());
        assert!(check(Op::Write).is_ok());
        let e = check(Op::Write).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert!(check(Op::Write).is_err());
        assert!(check(Op::Write).is_ok());
        assert_eq!(hits(), 2);
        clear();
    }
}
