//! Helpers every root test of the driver shares (test builds only): running a command,
//! entering a network namespace on a thread, dropping CAP_NET_ADMIN. Whether a root test
//! may run at all: `crate::testbed::root_tests_may_run`.

use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;

/// Run a command; return its stdout, or fail with its stderr on a non-zero exit.
pub fn run(args: &[&str]) -> io::Result<String> {
    let (cmd, rest) = args
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    let out = Command::new(cmd).args(rest).output()?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    Err(io::Error::other(format!(
        "{}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Run `f` on a new thread that has entered namespace `ns`; sockets it opens
/// stay in that namespace wherever they are used later.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: a valid namespace fd; only this short-lived thread moves.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .map_err(|_| io::Error::other("netns thread panicked"))?
    })
}

/// Drop CAP_NET_ADMIN from the calling thread's effective set (this thread only).
pub fn drop_net_admin() -> io::Result<()> {
    const CAP_V3: u32 = 0x2008_0522;
    const CAP_NET_ADMIN: u32 = 12;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let mut hdr = Header {
        version: CAP_V3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: hdr and data are the v3 layout the kernel expects, alive for the call.
    if unsafe { libc::syscall(libc::SYS_capget, &raw mut hdr, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    data[0].effective &= !(1 << CAP_NET_ADMIN);
    // SAFETY: as above; capset on pid 0 changes only the calling thread.
    if unsafe { libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
