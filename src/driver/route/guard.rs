//! The guard that undoes every route change of one `set_advmss` call.
//!
//! Invariants: changes are undone in reverse order of installation, through the
//! socket they were made with (so in the same network namespace, whichever
//! thread drops the guard); an undo that fails is logged and the others still
//! run; a route already gone counts as deleted.

use tracing::{debug, warn};

use super::error::{RouteError, Step};
use super::wire::{RTM_DELROUTE, RTM_NEWROUTE, Route};
use crate::driver::netlink::{NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE};
use crate::driver::nlsocket::{NlError, NlSocket};

/// How to undo one change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Undo {
    /// We added this route: delete exactly it.
    Delete { prefix: String, route: Route },
    /// We replaced a route: put this original back.
    Restore { prefix: String, route: Route },
}

/// Restores the routes `set_advmss` changed when dropped (best effort, errors logged).
///
/// Guards of calls for the same prefix must drop in reverse order of creation,
/// which is Rust's drop order for locals: each restores what it found.
#[derive(Debug)]
pub struct AdvmssGuard {
    sock: NlSocket,
    undo: Vec<Undo>,
}

impl AdvmssGuard {
    /// Start an empty guard owning the socket the changes are made with.
    pub(crate) fn new(sock: NlSocket) -> Self {
        AdvmssGuard {
            sock,
            undo: Vec::new(),
        }
    }

    /// Return the socket, to make the next change with.
    pub(crate) fn socket(&mut self) -> &mut NlSocket {
        &mut self.sock
    }

    /// Record a change that succeeded.
    pub(crate) fn push(&mut self, undo: Undo) {
        self.undo.push(undo);
    }

    /// Return how many route changes this guard will undo.
    pub fn len(&self) -> usize {
        self.undo.len()
    }

    /// Return true when there is nothing to undo.
    pub fn is_empty(&self) -> bool {
        self.undo.is_empty()
    }

    /// Undo every change now; return the first error (all undos are still tried).
    pub fn restore(mut self) -> Result<(), RouteError> {
        self.undo_all()
    }

    fn undo_all(&mut self) -> Result<(), RouteError> {
        let mut first = None;
        while let Some(u) = self.undo.pop() {
            if let Err(e) = undo_one(&mut self.sock, &u) {
                warn!("{e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for AdvmssGuard {
    fn drop(&mut self) {
        let _ = self.undo_all(); // each failure is already logged
    }
}

/// Apply one undo through `sock`.
fn undo_one(sock: &mut NlSocket, undo: &Undo) -> Result<(), RouteError> {
    let (prefix, route, step, msg_type, flags) = match undo {
        Undo::Delete { prefix, route } => (prefix, route, Step::Delete, RTM_DELROUTE, 0),
        Undo::Restore { prefix, route } => (
            prefix,
            route,
            Step::Restore,
            RTM_NEWROUTE,
            NLM_F_CREATE | NLM_F_REPLACE,
        ),
    };
    let seq = sock.next_seq();
    let mut buf = Vec::new();
    route.encode(&mut buf, msg_type, flags | NLM_F_ACK, seq);
    match super::wire::routes(sock, &buf, seq) {
        Ok(_) => {
            debug!(prefix = %prefix, "advmss route: {step} done");
            Ok(())
        }
        Err(NlError::Kernel(e)) if step == Step::Delete && is_gone(e.errno) => {
            debug!(prefix = %prefix, "advmss route: already gone");
            Ok(())
        }
        Err(e) => Err(super::apply::map_err(prefix, step, e)),
    }
}

/// Return true for the errnos a delete of a missing route gives.
fn is_gone(errno: i32) -> bool {
    errno == libc::ESRCH || errno == libc::ENOENT
}
