//! What every end-to-end test file shares: the engine binary, the root check, and the
//! rule that tests take the machine one at a time.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// The `mpolice` binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_mpolice"))
}

/// Whether this root test may run (see `testbed::root_tests_may_run`).
pub fn root() -> bool {
    mpolice::testbed::root_tests_may_run()
}

/// Tests run one at a time: each pushes the 2 CPUs hard, and a neighbour's load would
/// make the kernel drop packets in its own backlog queues, which no test here is about.
static MACHINE: Mutex<()> = Mutex::new(());

/// Take the machine for one test; a failed test must not block the others.
pub fn exclusive() -> MutexGuard<'static, ()> {
    MACHINE.lock().unwrap_or_else(|p| p.into_inner())
}
