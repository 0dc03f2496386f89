//! TLS session tickets that every worker can read: the supervisor makes the ticket keys
//! and hands them to all its workers (and keeps them across reloads), so a returning
//! client resumes whichever worker its new connection lands on, and after a reload too.
//! rustls' own ticketer draws its keys inside one process, which with several workers
//! makes resumption work only for the 1 in N clients that land on the same worker again.
//!
//! A ticket is `nonce (12 bytes) || ChaCha20-Poly1305(state) || tag`, sealed with the
//! current key; the previous key still opens tickets, so a ticket lives between one and
//! two rotation periods. The supervisor rotates every [`ROTATION`] and forgets the key
//! before, which bounds what a stolen key can decrypt (forward secrecy for older tickets).

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use std::sync::RwLock;
use std::time::Duration;

/// How often the supervisor makes a new ticket key.
pub const ROTATION: Duration = Duration::from_secs(6 * 60 * 60);
const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;
/// rustls' session state is a few hundred bytes; anything much longer is not ours.
const MAX_TICKET_LEN: usize = 4096;

/// One ticket key, as the supervisor makes it and sends it (hex on the worker channel).
#[derive(Clone, PartialEq, Eq)]
pub struct TicketKey([u8; KEY_LEN]);

impl TicketKey {
    pub fn random() -> Result<TicketKey, String> {
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| "no randomness for a TLS ticket key".to_string())?;
        Ok(TicketKey(key))
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<TicketKey> {
        if hex.len() != KEY_LEN * 2 || !hex.is_ascii() {
            return None;
        }
        let mut key = [0u8; KEY_LEN];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(TicketKey(key))
    }
}

impl std::fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TicketKey(..)")
    }
}

/// The supervisor's keys: the current one seals, the previous one still opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TicketKeys {
    pub current: TicketKey,
    pub previous: Option<TicketKey>,
}

impl TicketKeys {
    pub fn new() -> Result<TicketKeys, String> {
        Ok(TicketKeys {
            current: TicketKey::random()?,
            previous: None,
        })
    }

    /// The keys as hex words, the current one first: how they go to the workers and to
    /// the successor of an upgrade.
    pub fn to_words(&self) -> String {
        match &self.previous {
            Some(previous) => format!("{} {}", self.current.to_hex(), previous.to_hex()),
            None => self.current.to_hex(),
        }
    }

    /// The keys [`TicketKeys::to_words`] wrote, or None if a word is not a key.
    pub fn from_words(current: &str, previous: Option<&str>) -> Option<TicketKeys> {
        Some(TicketKeys {
            current: TicketKey::from_hex(current)?,
            previous: match previous {
                Some(hex) => Some(TicketKey::from_hex(hex)?),
                None => None,
            },
        })
    }

    /// A new current key; the oldest is forgotten.
    pub fn rotate(&mut self) -> Result<(), String> {
        let next = TicketKey::random()?;
        self.previous = Some(std::mem::replace(&mut self.current, next));
        Ok(())
    }
}

/// The ticketer every TLS listener of a worker uses; the supervisor's keys are swapped in
/// when they rotate.
#[derive(Default)]
pub struct SharedTicketer {
    keys: RwLock<Vec<LessSafeKey>>,
}

impl std::fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedTicketer")
    }
}

impl SharedTicketer {
    pub fn set(&self, keys: &TicketKeys) {
        let sealing = |key: &TicketKey| {
            LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &key.0).expect("32-byte key"))
        };
        let mut new = vec![sealing(&keys.current)];
        new.extend(keys.previous.as_ref().map(sealing));
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = new;
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        ROTATION.as_secs() as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        let key = keys.first()?;
        // A random nonce: 2^-96 collision odds per pair, and no counter to leak.
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(NONCE_LEN + plain.len() + TAG_LEN);
        ticket.extend_from_slice(&nonce);
        ticket.extend_from_slice(plain);
        let tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut ticket[NONCE_LEN..],
            )
            .ok()?;
        ticket.extend_from_slice(tag.as_ref());
        Some(ticket)
    }

    fn decrypt(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < NONCE_LEN + TAG_LEN || ticket.len() > MAX_TICKET_LEN {
            return None;
        }
        let (nonce, sealed) = ticket.split_at(NONCE_LEN);
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        keys.iter().find_map(|key| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut buffer = sealed.to_vec();
            let plain = key.open_in_place(nonce, Aad::empty(), &mut buffer).ok()?;
            Some(plain.to_vec())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ticketer(keys: &TicketKeys) -> SharedTicketer {
        let t = SharedTicketer::default();
        t.set(keys);
        t
    }

    #[test]
    fn workers_with_the_same_keys_open_each_others_tickets() {
        let keys = TicketKeys::new().unwrap();
        let (one, two) = (ticketer(&keys), ticketer(&keys));
        let ticket = one.encrypt(b"session state").unwrap();
        assert_ne!(&ticket[NONCE_LEN..NONCE_LEN + 13], b"session state");
        assert_eq!(two.decrypt(&ticket).unwrap(), b"session state");
        let other = ticketer(&TicketKeys::new().unwrap());
        assert_eq!(other.decrypt(&ticket), None, "another gateway's key");
    }

    #[test]
    fn a_ticket_opens_for_one_rotation_more_then_never() {
        let mut keys = TicketKeys::new().unwrap();
        let t = ticketer(&keys);
        let ticket = t.encrypt(b"state").unwrap();
        keys.rotate().unwrap();
        t.set(&keys);
        assert_eq!(t.decrypt(&ticket).unwrap(), b"state", "previous key");
        keys.rotate().unwrap();
        t.set(&keys);
        assert_eq!(t.decrypt(&ticket), None, "two rotations ago: forgotten");
    }

    #[test]
    fn tampered_short_long_or_keyless_tickets_are_refused() {
        let keys = TicketKeys::new().unwrap();
        let t = ticketer(&keys);
        let mut ticket = t.encrypt(b"state").unwrap();
        ticket[NONCE_LEN] ^= 1;
        assert_eq!(t.decrypt(&ticket), None);
        assert_eq!(t.decrypt(&[0; NONCE_LEN + TAG_LEN - 1]), None);
        assert_eq!(t.decrypt(&vec![0; MAX_TICKET_LEN + 1]), None);
        let empty = SharedTicketer::default();
        assert_eq!(empty.encrypt(b"state"), None);
    }

    #[test]
    fn keys_do_not_show_in_debug_output() {
        let keys = TicketKeys::new().unwrap();
        assert!(!format!("{keys:?}").contains(&keys.current.to_hex()));
    }
}
