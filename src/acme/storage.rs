//! Where the ACME account and the certificates are kept: a directory of the gateway's own
//! (0700, files 0600, written whole and renamed into place), or Redis, shared by every
//! gateway that uses it, with a lock so that one of them orders a certificate and the
//! others load it.

use crate::config::{AcmeStorage, RedisConfig};
use crate::tls::acme::PemPair;
use serde::{Deserialize, Serialize};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long an ordering gateway holds the lock: more than an order takes, and short
/// enough that a gateway that died mid-order does not keep the others waiting long.
pub const LOCK_TTL: Duration = Duration::from_secs(120);
const PREFIX: &str = "gateway:acme:";

/// The account as stored: its credentials are only good at the directory they were made
/// at.
#[derive(Serialize, Deserialize)]
pub struct StoredAccount {
    pub directory: String,
    pub credentials: instant_acme::AccountCredentials,
}

pub enum Storage {
    Dir(PathBuf),
    /// Boxed: one per gateway, and the client is ten times a path's size.
    Redis(Box<redis::Client>),
}

/// A held Redis lock (nothing for a directory); released by [`Storage::unlock`], or when
/// its time runs out.
pub struct Lock(Option<(String, String)>);

impl Storage {
    pub fn new(storage: &AcmeStorage, redis: Option<&RedisConfig>) -> Result<Storage, String> {
        match (storage, redis) {
            (AcmeStorage::Dir(dir), _) => Ok(Storage::Dir(dir.clone())),
            (AcmeStorage::Redis, Some(redis)) => redis
                .client()
                .map(|client| Storage::Redis(Box::new(client)))
                .map_err(|e| format!("redis: {e}")),
            (AcmeStorage::Redis, None) => Err("storage = \"redis\" without [redis]".into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Storage::Dir(dir) => dir.display().to_string(),
            Storage::Redis(_) => "redis".into(),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        match self {
            Storage::Dir(dir) => match std::fs::read(dir.join(key)) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(format!("{}: {e}", dir.join(key).display())),
            },
            Storage::Redis(client) => {
                let mut c = connect(client).await?;
                redis::cmd("GET")
                    .arg(format!("{PREFIX}{key}"))
                    .query_async(&mut c)
                    .await
                    .map_err(|e| format!("redis: {e}"))
            }
        }
    }

    /// Stores `value` under `key`; with `only_new`, only when nothing is there yet
    /// (false: something was).
    async fn put(&self, key: &str, value: &[u8], only_new: bool) -> Result<bool, String> {
        match self {
            Storage::Dir(dir) => {
                if only_new && dir.join(key).exists() {
                    return Ok(false);
                }
                write_private(dir, key, value)?;
                Ok(true)
            }
            Storage::Redis(client) => {
                let mut c = connect(client).await?;
                let mut cmd = redis::cmd("SET");
                cmd.arg(format!("{PREFIX}{key}")).arg(value);
                if only_new {
                    cmd.arg("NX");
                }
                let done: Option<String> = cmd
                    .query_async(&mut c)
                    .await
                    .map_err(|e| format!("redis: {e}"))?;
                Ok(done.is_some())
            }
        }
    }

    pub async fn account(&self) -> Result<Option<StoredAccount>, String> {
        match self.get("account.json").await? {
            None => Ok(None),
            Some(json) => serde_json::from_slice(&json)
                .map(Some)
                .map_err(|e| format!("the stored ACME account is unreadable: {e}")),
        }
    }

    /// Keeps a new account unless another gateway stored one meanwhile; the one stored
    /// is the one to use.
    pub async fn keep_account(&self, account: &StoredAccount, replace: bool) -> Result<(), String> {
        let json = serde_json::to_vec(account).map_err(|e| e.to_string())?;
        self.put("account.json", &json, !replace).await.map(|_| ())
    }

    pub async fn certificate(&self, name: &str) -> Result<Option<PemPair>, String> {
        let (chain, key) = match self {
            Storage::Dir(_) => (
                self.get(&format!("{name}.crt")).await?,
                self.get(&format!("{name}.key")).await?,
            ),
            Storage::Redis(_) => match self.get(&format!("cert:{name}")).await? {
                None => (None, None),
                Some(json) => {
                    let pair: PemPair = serde_json::from_slice(&json)
                        .map_err(|e| format!("the stored certificate of {name}: {e}"))?;
                    (Some(pair.chain.into_bytes()), Some(pair.key.into_bytes()))
                }
            },
        };
        match (chain, key) {
            (Some(chain), Some(key)) => Ok(Some(PemPair {
                chain: String::from_utf8(chain).map_err(|e| e.to_string())?,
                key: String::from_utf8(key).map_err(|e| e.to_string())?,
            })),
            _ => Ok(None),
        }
    }

    pub async fn keep_certificate(&self, name: &str, pair: &PemPair) -> Result<(), String> {
        match self {
            // The key first: a crash between the two leaves the old chain with a key that
            // does not match, which loading refuses, and the certificate is ordered again.
            Storage::Dir(_) => {
                self.put(&format!("{name}.key"), pair.key.as_bytes(), false)
                    .await?;
                self.put(&format!("{name}.crt"), pair.chain.as_bytes(), false)
                    .await?;
            }
            Storage::Redis(_) => {
                let json = serde_json::to_vec(pair).map_err(|e| e.to_string())?;
                self.put(&format!("cert:{name}"), &json, false).await?;
            }
        }
        Ok(())
    }

    /// The right to order `name`'s certificate, or `None` while another gateway holds it.
    pub async fn lock(&self, name: &str) -> Result<Option<Lock>, String> {
        let Storage::Redis(client) = self else {
            return Ok(Some(Lock(None)));
        };
        let key = format!("{PREFIX}lock:{name}");
        let token = format!("{}-{}", std::process::id(), fastrand::u64(..));
        let mut c = connect(client).await?;
        let taken: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LOCK_TTL.as_millis() as u64)
            .query_async(&mut c)
            .await
            .map_err(|e| format!("redis: {e}"))?;
        Ok(taken.map(|_| Lock(Some((key, token)))))
    }

    /// Gives the lock back, if it is still ours.
    pub async fn unlock(&self, lock: Lock) {
        let (Storage::Redis(client), Lock(Some((key, token)))) = (self, lock) else {
            return;
        };
        const RELEASE: &str =
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
        if let Ok(mut c) = connect(client).await {
            let released: redis::RedisResult<i64> = redis::Script::new(RELEASE)
                .key(&key)
                .arg(&token)
                .invoke_async(&mut c)
                .await;
            if let Err(e) = released {
                tracing::warn!("acme: the lock {key} was not released: {e}");
            }
        }
    }
}

async fn connect(client: &redis::Client) -> Result<redis::aio::MultiplexedConnection, String> {
    let connecting = client.get_multiplexed_async_connection();
    match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!("redis: {e}")),
        Err(_) => Err("redis: no connection within 5s".into()),
    }
}

/// Writes `dir/name` whole, readable by the owner only, then renames it into place.
fn write_private(dir: &Path, name: &str, value: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let at = |e: std::io::Error| format!("{}: {e}", dir.join(name).display());
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(at)?;
    let staged = dir.join(format!(".{name}.new"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&staged)
        .map_err(at)?;
    file.write_all(value)
        .and_then(|_| file.sync_all())
        .map_err(at)?;
    std::fs::rename(&staged, dir.join(name)).map_err(at)
}
