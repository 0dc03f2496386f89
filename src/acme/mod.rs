//! Automatic HTTPS: the gateway's ACME client. One runs per gateway, in the supervisor
//! (never one per worker): for each `acme` entry of the listeners it loads the stored
//! certificate, or orders one, sends it to the workers (see `tls::acme`), and renews it
//! before it expires: when the CA's renewal information (RFC 9773) says, else
//! `renew_before` ahead of expiry (at most half the certificate's life).
//!
//! - `order.rs`: the account and one order, its challenges answered by the workers;
//! - `storage.rs`: a directory, or Redis shared between gateways with a lock per name.

pub mod order;
pub mod storage;

use crate::config::{AcmeConfig, Challenge, Config, RedisConfig, TlsSource};
use crate::protocol::CertificateStatus;
use crate::tls::acme::{AcmeState, PemPair};
use crate::tls::cert_info::CertInfo;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use storage::Storage;
use tokio::sync::oneshot;

/// The first retry after a failed order; each next one waits twice as long, up to
/// [`RETRY_MAX`] (a CA limits failed validations per name and hour).
const RETRY_FIRST: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// A sleeping entry wakes at least this often to look again (the clock may jump; the CA's
/// renewal window may move).
const LOOK_AGAIN: Duration = Duration::from_secs(3600);
/// How long a change of the state waits for every worker to hold it.
const HELD_WITHIN: Duration = Duration::from_secs(2);
/// While another gateway holds an order's lock, look for its result this often.
const WAIT_FOR_OTHER: Duration = Duration::from_secs(1);

/// What the ACME client does for a config; a reload that leaves it as it was leaves the
/// client running (an order in progress goes on).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    config: AcmeConfig,
    redis: Option<RedisConfig>,
    /// Each entry's names; the first names the entry.
    entries: Vec<Vec<String>>,
    challenge: Challenge,
}

impl Plan {
    /// `None` when the config has no `acme` entry.
    pub fn of(config: &Config) -> Option<Plan> {
        let acme = config.acme.clone()?;
        let entries: Vec<Vec<String>> = (config.listeners.iter().flat_map(|l| &l.tls))
            .filter_map(|t| match t {
                TlsSource::Acme(names) => Some(names.clone()),
                TlsSource::Files(_) => None,
            })
            .collect();
        if entries.is_empty() {
            return None;
        }
        let plain = config.listeners.iter().any(|l| l.tls.is_empty());
        let challenge = acme.challenge.unwrap_or(if plain {
            Challenge::Http01
        } else {
            Challenge::TlsAlpn01
        });
        Some(Plan {
            config: acme,
            redis: config.redis.clone(),
            entries,
            challenge,
        })
    }
}

/// The ACME entries' state for `/status`, `/readyz`, `/metrics` and `gatewayctl certs`, by
/// first name.
pub type Board = Arc<Mutex<BTreeMap<String, CertificateStatus>>>;

/// Tells every worker the new state; the sender is answered once they have been told.
pub type Tell = Box<dyn Fn(AcmeState, oneshot::Sender<()>) + Send + Sync>;

/// The state the workers have, changed only through [`Publisher::change`].
pub struct Publisher {
    state: Mutex<AcmeState>,
    tell: Tell,
}

impl Publisher {
    /// Changes the state and returns once every worker serves with it (a CA validates
    /// as soon as it is told a challenge is ready), or after [`HELD_WITHIN`] (a worker
    /// stuck or mid-reload: the CA's validation may then fail, and is tried again).
    pub async fn change(&self, edit: impl FnOnce(&mut AcmeState)) {
        let state = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            edit(&mut state);
            state.clone()
        };
        let (sent, told) = oneshot::channel();
        (self.tell)(state, sent);
        if tokio::time::timeout(HELD_WITHIN, told).await.is_err() {
            tracing::warn!("acme: not every worker said it has the new state within 2s");
        }
    }
}

struct Shared {
    plan: Plan,
    storage: Storage,
    account: tokio::sync::Mutex<Option<instant_acme::Account>>,
    publisher: Publisher,
    board: Board,
}

/// The running client; dropping it stops it (a reload that changed the plan).
pub struct Manager {
    pub plan: Plan,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Manager {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Manager {
    /// Starts following every entry of `plan`. `current` is what the workers have now:
    /// certificates of entries still in the plan serve on while they are looked at again.
    pub fn start(plan: Plan, board: Board, current: &AcmeState, tell: Tell) -> Manager {
        let first_names: Vec<&String> = plan.entries.iter().map(|e| &e[0]).collect();
        let mut kept = AcmeState::default();
        for (name, pair) in &current.certs {
            if first_names.contains(&name) {
                kept.certs.insert(name.clone(), pair.clone());
            }
        }
        {
            let mut board = board.lock().unwrap_or_else(|p| p.into_inner());
            board.retain(|name, _| first_names.contains(&name));
            for names in &plan.entries {
                board
                    .entry(names[0].clone())
                    .or_insert_with(|| CertificateStatus {
                        names: names.clone(),
                        source: "acme".into(),
                        ..CertificateStatus::default()
                    });
            }
        }
        let storage = match Storage::new(&plan.config.storage, plan.redis.as_ref()) {
            Ok(storage) => storage,
            Err(e) => {
                // `check` refuses what would make this fail.
                tracing::error!("acme: {e}");
                return Manager {
                    plan,
                    tasks: Vec::new(),
                };
            }
        };
        tracing::info!(
            "acme: {} certificates from {} (storage {}, {:?})",
            plan.entries.len(),
            plan.config.directory,
            storage.describe(),
            plan.challenge
        );
        let shared = Arc::new(Shared {
            plan: plan.clone(),
            storage,
            account: tokio::sync::Mutex::new(None),
            publisher: Publisher {
                state: Mutex::new(kept),
                tell,
            },
            board,
        });
        let tasks = plan
            .entries
            .iter()
            .map(|names| tokio::spawn(shared.clone().follow(names.clone())))
            .collect();
        Manager { plan, tasks }
    }
}

/// A certificate the gateway serves, and what it knows of it.
struct Held {
    pair: PemPair,
    info: CertInfo,
    /// When to renew (seconds since the epoch).
    renew_at: i64,
}

use crate::sys::unix_seconds as now;

impl Shared {
    /// One entry, for as long as the plan holds: load, order when missing or due, renew.
    async fn follow(self: Arc<Self>, names: Vec<String>) {
        let name = names[0].clone();
        let mut held: Option<Held> = None;
        let mut failures = 0u32;
        loop {
            let due = held.as_ref().is_none_or(|h| h.renew_at <= now());
            if due {
                // Stored by an earlier run, or by another gateway sharing the storage.
                match self.storage.certificate(&name).await {
                    Ok(Some(pair)) => {
                        let newer = |info: &CertInfo| {
                            held.as_ref()
                                .is_none_or(|h| info.not_after > h.info.not_after)
                        };
                        match usable(&pair, &names) {
                            Ok(info) if newer(&info) => {
                                held = Some(self.serve(&names, pair, info, "loaded").await);
                                continue;
                            }
                            Ok(_) => {}
                            Err(e) => tracing::warn!("acme: the stored certificate of {name}: {e}"),
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("acme: {e}"),
                }
            } else if let Some(h) = &held {
                let wait = Duration::from_secs((h.renew_at - now()).max(1) as u64);
                tokio::time::sleep(wait.min(LOOK_AGAIN)).await;
                if let Some(h) = &mut held {
                    h.renew_at = self.renew_at(&h.pair, &h.info).await;
                    self.note(&name, |s| s.next_renewal = Some(h.renew_at));
                }
                continue;
            }
            match self.obtain(&names).await {
                Ok(Some(pair)) => {
                    failures = 0;
                    match usable(&pair, &names) {
                        Ok(info) => held = Some(self.serve(&names, pair, info, "obtained").await),
                        Err(e) => {
                            tracing::error!(
                                "acme: the CA's certificate for {name} is unusable: {e}"
                            )
                        }
                    }
                }
                Ok(None) => tokio::time::sleep(WAIT_FOR_OTHER).await,
                Err(e) => {
                    failures += 1;
                    let delay = RETRY_FIRST
                        .saturating_mul(1 << (failures - 1).min(10))
                        .min(RETRY_MAX);
                    tracing::error!(
                        "acme: no certificate for {}: {e}; trying again in {}s",
                        names.join(", "),
                        delay.as_secs()
                    );
                    self.note(&name, |s| s.last_error = Some(e.clone()));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Sends `pair` to the workers and notes it.
    async fn serve(&self, names: &[String], pair: PemPair, info: CertInfo, how: &str) -> Held {
        let name = &names[0];
        let renew_at = self.renew_at(&pair, &info).await;
        let sent = pair.clone();
        self.publisher
            .change(|state| drop(state.certs.insert(name.clone(), sent)))
            .await;
        tracing::info!(
            "acme: certificate for {} {how}: issued by {}, expires {}, renewal {}",
            names.join(", "),
            info.issuer,
            rfc3339(info.not_after),
            rfc3339(renew_at)
        );
        self.note(name, |s| {
            s.issuer = Some(info.issuer.clone());
            s.not_before = Some(info.not_before);
            s.not_after = Some(info.not_after);
            s.next_renewal = Some(renew_at);
            if how == "obtained" {
                s.last_error = None;
            }
        });
        Held {
            pair,
            info,
            renew_at,
        }
    }

    fn note(&self, name: &str, edit: impl FnOnce(&mut CertificateStatus)) {
        let mut board = self.board.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(status) = board.get_mut(name) {
            edit(status);
        }
    }

    /// A new certificate: ordered under the storage's lock, unless another gateway
    /// stored a fresh one meanwhile. `None` while another gateway holds the lock.
    async fn obtain(&self, names: &[String]) -> Result<Option<PemPair>, String> {
        let name = &names[0];
        let Some(lock) = self.storage.lock(name).await? else {
            return Ok(None);
        };
        let result = self.obtain_locked(names).await;
        self.storage.unlock(lock).await;
        result.map(Some)
    }

    async fn obtain_locked(&self, names: &[String]) -> Result<PemPair, String> {
        let name = &names[0];
        if let Some(pair) = self.storage.certificate(name).await? {
            if let Ok(info) = usable(&pair, names) {
                if self.renew_at(&pair, &info).await > now() {
                    return Ok(pair);
                }
            }
        }
        let account = self.account().await?;
        tracing::info!(
            "acme: ordering a certificate for {} ({:?})",
            names.join(", "),
            self.plan.challenge
        );
        let pair = order::order(&account, names, self.plan.challenge, &self.publisher).await?;
        if let Err(e) = self.storage.keep_certificate(name, &pair).await {
            // It serves anyway; the next start orders again.
            tracing::error!("acme: the certificate for {name} is not stored: {e}");
        }
        Ok(pair)
    }

    async fn account(&self) -> Result<instant_acme::Account, String> {
        let mut account = self.account.lock().await;
        if let Some(account) = &*account {
            return Ok(account.clone());
        }
        let made = order::account(&self.plan.config, &self.storage).await?;
        *account = Some(made.clone());
        Ok(made)
    }

    /// When to renew: in the CA's suggested window when it offers renewal information,
    /// else `renew_before` ahead of expiry, but at most half the certificate's life.
    async fn renew_at(&self, pair: &PemPair, info: &CertInfo) -> i64 {
        if let Some(at) = self.suggested(pair).await {
            return at;
        }
        let life = (info.not_after - info.not_before).max(0);
        let before = (self.plan.config.renew_before.as_secs() as i64).min(life / 2);
        info.not_after - before
    }

    /// A time in the CA's suggested renewal window (RFC 9773), if it has one to say.
    async fn suggested(&self, pair: &PemPair) -> Option<i64> {
        use rustls::pki_types::pem::PemObject;
        // The stored account (loaded once): asking for renewal information needs none of
        // its keys, but the directory's address of the information.
        let account = self.account().await.ok()?;
        let der = rustls::pki_types::CertificateDer::pem_slice_iter(pair.chain.as_bytes())
            .next()?
            .ok()?;
        let id = instant_acme::CertificateIdentifier::try_from(&der).ok()?;
        let (info, _) = account.renewal_info(&id).await.ok()?;
        let (start, end) = (
            info.suggested_window.start.unix_timestamp(),
            info.suggested_window.end.unix_timestamp(),
        );
        Some(if end > start {
            start + fastrand::i64(0..end - start)
        } else {
            start
        })
    }
}

/// The certificate's details if it is for every one of `names`, its key matches and it
/// has not expired.
fn usable(pair: &PemPair, names: &[String]) -> Result<CertInfo, String> {
    let info = CertInfo::from_pem(pair.chain.as_bytes())?;
    if !info.covers(names) {
        return Err(format!("it is for {}", info.names.join(", ")));
    }
    if info.not_after <= now() {
        return Err(format!("it expired at {}", rfc3339(info.not_after)));
    }
    crate::tls::certified_key(pair.chain.as_bytes(), pair.key.as_bytes(), "chain", "key")?;
    Ok(info)
}

pub fn rfc3339(unix: i64) -> String {
    chrono::DateTime::from_timestamp(unix, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| unix.to_string())
}
