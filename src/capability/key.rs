//! mbox keys: the secret behind every MAC, a two-key ring for rotation, the key file.
//!
//! Key file format: one key per line, `KEYID HEX64` (a decimal id 0..=15, a
//! space or tab, 64 hex digits = 32 bytes); `#` starts a comment; blank lines
//! are ignored. At most 2 keys: the last is the current key (new
//! capabilities), the one before it the previous key (still accepted).
//!
//! ```text
//! # previous
//! 1 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
//! # current
//! 2 60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752
//! ```
//!
//! Invariants: key bytes appear in no `Debug` output and no error message
//! (errors name the line, never echo it); a [`Key`] keeps only the keyed
//! HMAC state, which is zeroed on drop (hmac's `zeroize` feature). The ring's
//! ids are at most [`MAX_KEY_ID`] and distinct.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};

use hmac::digest::KeyInit;
use hmac::digest::zeroize::Zeroize;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::CapError;

/// The MAC state type behind a [`Key`].
pub(super) type HmacSha256 = Hmac<Sha256>;

/// Bytes in a key.
pub const KEY_LEN: usize = 32;

/// The largest key id (it is a nibble on the wire).
pub const MAX_KEY_ID: u8 = 15;

/// SHA-256's block size: HMAC pads shorter keys with zeros to this length.
const BLOCK_LEN: usize = 64;

/// A 32-byte mbox secret, kept as a ready-keyed HMAC-SHA256 state.
pub struct Key {
    mac: HmacSha256,
}

impl Key {
    /// Make a key from its 32 bytes (the copy passed in is zeroed).
    pub fn from_bytes(mut bytes: [u8; KEY_LEN]) -> Key {
        // RFC 2104: a key shorter than the block is zero-padded to it; doing
        // it here makes keying infallible.
        let mut block = [0u8; BLOCK_LEN];
        block[..KEY_LEN].copy_from_slice(&bytes);
        let mac = HmacSha256::new(&block.into());
        block.zeroize();
        bytes.zeroize();
        Key { mac }
    }

    /// Make a key from 32 bytes of `/dev/urandom`.
    pub fn random() -> io::Result<Key> {
        Ok(Key::from_bytes(random_bytes()?))
    }

    /// Return the keyed HMAC state (clone it, then feed it the message).
    pub(super) fn hmac(&self) -> &HmacSha256 {
        &self.mac
    }

    /// The key this one becomes for one run of the mbox: HMAC(key, label ‖ run).
    ///
    /// Every MAC made with it binds the run, so a capability issued before a restart
    /// (or a reboot, when the clock it carries starts over) never verifies after it.
    fn for_run(&self, run: &RunId) -> Key {
        let mut mac = self.mac.clone();
        mac.update(RUN_LABEL);
        mac.update(&run.0);
        let mut bytes: [u8; KEY_LEN] = mac.finalize().into_bytes().into();
        let key = Key::from_bytes(bytes);
        bytes.zeroize();
        key
    }
}

/// Domain separation for [`Key::for_run`].
const RUN_LABEL: &[u8] = b"mpolice capability run key v1";

/// Random bytes drawn once per mbox process: what tells its runs apart.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RunId([u8; 16]);

impl RunId {
    /// Draw a new run id from `/dev/urandom`.
    pub fn random() -> io::Result<RunId> {
        Ok(RunId(random_bytes()?))
    }

    /// A fixed run id (tests, benches, fuzzing).
    pub const fn from_bytes(bytes: [u8; 16]) -> RunId {
        RunId(bytes)
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not secret, but nothing outside the process needs it either.
        f.write_str("RunId(<redacted>)")
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// The mbox's keys: the current one signs, the current and previous verify.
#[derive(Debug)]
pub struct KeyRing {
    current: (u8, Key),
    previous: Option<(u8, Key)>,
}

impl KeyRing {
    /// Make a ring holding one key.
    pub fn new(id: u8, key: Key) -> Result<KeyRing, CapError> {
        if id > MAX_KEY_ID {
            return Err(CapError::BadKeyId);
        }
        Ok(KeyRing {
            current: (id, key),
            previous: None,
        })
    }

    /// Return the current key and its id (use it to stamp).
    pub fn current(&self) -> (u8, &Key) {
        (self.current.0, &self.current.1)
    }

    /// Return the previous key's id, if one is still accepted.
    pub fn previous_id(&self) -> Option<u8> {
        self.previous.as_ref().map(|(id, _)| *id)
    }

    /// Return the key with this id, current or previous.
    pub fn get(&self, id: u8) -> Option<&Key> {
        if self.current.0 == id {
            return Some(&self.current.1);
        }
        match &self.previous {
            Some((pid, key)) if *pid == id => Some(key),
            _ => None,
        }
    }

    /// Make `new_key` current; the old current key becomes the previous one.
    ///
    /// The key previous before is dropped. Call [`KeyRing::expire_previous`]
    /// one period later.
    pub fn rotate(&mut self, new_id: u8, new_key: Key) -> Result<(), CapError> {
        if new_id > MAX_KEY_ID {
            return Err(CapError::BadKeyId);
        }
        if new_id == self.current.0 {
            return Err(CapError::DuplicateKeyId);
        }
        let old = std::mem::replace(&mut self.current, (new_id, new_key));
        self.previous = Some(old);
        Ok(())
    }

    /// Stop accepting the previous key.
    pub fn expire_previous(&mut self) {
        self.previous = None;
    }

    /// The same ids with each key bound to `run` (see [`Key::for_run`]).
    pub fn for_run(&self, run: &RunId) -> KeyRing {
        KeyRing {
            current: (self.current.0, self.current.1.for_run(run)),
            previous: self
                .previous
                .as_ref()
                .map(|(id, key)| (*id, key.for_run(run))),
        }
    }

    /// Parse a key file (format in the module docs).
    pub fn parse(text: &str) -> Result<KeyRing, KeyFileError> {
        let mut keys: Vec<(usize, u8, Key)> = Vec::with_capacity(2);
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let content = raw.split_once('#').map_or(raw, |(code, _)| code);
            let fields: Vec<&str> = content.split_whitespace().collect();
            let (id_text, hex) = match fields.as_slice() {
                [] => continue,
                [id, hex] => (*id, *hex),
                _ => {
                    return Err(KeyFileError::Fields {
                        line,
                        found: fields.len(),
                    });
                }
            };
            if keys.len() == 2 {
                return Err(KeyFileError::TooManyKeys { line });
            }
            let id = parse_id(id_text, line)?;
            if let Some((first, _, _)) = keys.iter().find(|(_, kid, _)| *kid == id) {
                return Err(KeyFileError::DuplicateId {
                    line,
                    id,
                    first: *first,
                });
            }
            keys.push((line, id, Key::from_bytes(parse_hex(hex, line)?)));
        }
        let mut keys = keys.into_iter();
        match (keys.next(), keys.next()) {
            (None, _) => Err(KeyFileError::NoKey),
            (Some((_, id, key)), None) => Ok(KeyRing {
                current: (id, key),
                previous: None,
            }),
            (Some((_, old_id, old_key)), Some((_, id, key))) => Ok(KeyRing {
                current: (id, key),
                previous: Some((old_id, old_key)),
            }),
        }
    }
}

/// Why a key file was rejected; each message names the line, never its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum KeyFileError {
    /// A line that is not `KEYID HEX64`.
    #[error("key file line {line}: expected `KEYID HEX64`, found {found} field(s)")]
    Fields {
        /// 1-based line number.
        line: usize,
        /// Whitespace-separated fields on the line.
        found: usize,
    },
    /// The key id is not a decimal number.
    #[error("key file line {line}: key id is not a number from 0 to 15")]
    BadId {
        /// 1-based line number.
        line: usize,
    },
    /// The key id is over [`MAX_KEY_ID`].
    #[error("key file line {line}: key id {id} is over 15")]
    IdTooLarge {
        /// 1-based line number.
        line: usize,
        /// The id found.
        id: u32,
    },
    /// The key is not 64 characters long.
    #[error("key file line {line}: key is {found} characters long, expected 64 hex digits")]
    KeyLength {
        /// 1-based line number.
        line: usize,
        /// Characters found.
        found: usize,
    },
    /// The key has a character that is not a hex digit.
    #[error("key file line {line}: key has a character that is not a hex digit")]
    BadHex {
        /// 1-based line number.
        line: usize,
    },
    /// Two keys with the same id.
    #[error("key file line {line}: key id {id} is already used on line {first}")]
    DuplicateId {
        /// 1-based line number of the second use.
        line: usize,
        /// The id.
        id: u8,
        /// 1-based line number of the first use.
        first: usize,
    },
    /// A third key.
    #[error("key file line {line}: a third key; at most 2 (previous, then current)")]
    TooManyKeys {
        /// 1-based line number.
        line: usize,
    },
    /// No key line at all.
    #[error("key file has no key line (expected `KEYID HEX64`)")]
    NoKey,
}

/// Parse a decimal key id 0..=15.
fn parse_id(text: &str, line: usize) -> Result<u8, KeyFileError> {
    if text.is_empty() || text.len() > 9 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(KeyFileError::BadId { line });
    }
    let id: u32 = text.parse().map_err(|_| KeyFileError::BadId { line })?;
    match u8::try_from(id) {
        Ok(id) if id <= MAX_KEY_ID => Ok(id),
        _ => Err(KeyFileError::IdTooLarge { line, id }),
    }
}

/// Parse 64 hex digits (either case) into key bytes.
fn parse_hex(text: &str, line: usize) -> Result<[u8; KEY_LEN], KeyFileError> {
    let found = text.chars().count();
    if found != 2 * KEY_LEN {
        return Err(KeyFileError::KeyLength { line, found });
    }
    let mut out = [0u8; KEY_LEN];
    let mut ok = text.len() == 2 * KEY_LEN;
    for (byte, pair) in out.iter_mut().zip(text.as_bytes().chunks_exact(2)) {
        let hi = pair.first().copied().and_then(nibble);
        let lo = pair.get(1).copied().and_then(nibble);
        if let (Some(hi), Some(lo)) = (hi, lo) {
            *byte = (hi << 4) | lo;
        } else {
            ok = false;
            break;
        }
    }
    if !ok {
        out.zeroize();
        return Err(KeyFileError::BadHex { line });
    }
    Ok(out)
}

/// Return the value of one hex digit.
fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Read N bytes from `/dev/urandom`.
fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Return a new key file line `ID HEX64` (no newline) from `/dev/urandom`.
pub fn generate_key_line(id: u8) -> io::Result<String> {
    if id > MAX_KEY_ID {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "key id must be 0..=15",
        ));
    }
    let mut bytes: [u8; KEY_LEN] = random_bytes()?;
    let mut line = format!("{id} ");
    for b in bytes {
        line.push(char::from(HEX[usize::from(b >> 4)]));
        line.push(char::from(HEX[usize::from(b & 0x0F)]));
    }
    bytes.zeroize();
    Ok(line)
}

/// Lower-case hex digits.
const HEX: &[u8; 16] = b"0123456789abcdef";
