//! A thread answering the clients of a nonblocking listener (the control socket, the
//! metrics endpoint) one at a time, until told to stop.

use std::io::ErrorKind;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the thread waits between checks of the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// On a thread named `name`, take each client `accept` yields and give it to `answer`,
/// until `stop` is set. A client that fails is logged at debug level (it is the
/// client's problem), a `listener` that fails at warn. Whatever `accept` owns (the
/// listener) is dropped when the thread ends.
pub fn serve<S, A, H>(
    (name, listener): (&'static str, &'static str),
    stop: Arc<AtomicBool>,
    mut accept: A,
    answer: H,
) -> std::io::Result<JoinHandle<()>>
where
    A: FnMut() -> std::io::Result<S> + Send + 'static,
    H: Fn(S) -> anyhow::Result<()> + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match accept() {
                    Ok(stream) => {
                        if let Err(e) = answer(stream) {
                            tracing::debug!("{name} client: {e}");
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
                    Err(e) => {
                        tracing::warn!("{listener}: {e}");
                        std::thread::sleep(POLL)
                    }
                }
            }
        })
}
