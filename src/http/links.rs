//! Expiring download links: an HMAC-SHA256 signature over the job id and an
//! expiry time, checked in constant time.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::error::{Error, Result};

type HmacSha256 = Hmac<Sha256>;

/// The shortest key [`DownloadLinks::new`] accepts: 32 bytes, the output
/// size of SHA-256.
pub const MIN_KEY_BYTES: usize = 32;

/// Expiring download links for finished exports, set with
/// [`HttpOptions::with_download_links`](super::HttpOptions::with_download_links).
///
/// With it, a finished export's `url` is a link valid for
/// [`valid_for`](Self::valid_for): the result store's presigned URL where
/// it can sign ([`ResultStorageEngine::signed_url`](crate::ResultStorageEngine::signed_url),
/// for example S3), otherwise `…/export/{id}?expires=…&signature=…`, signed
/// with HMAC-SHA256 under `key`, which the router's `/export` route checks
/// (a changed id, expiry or signature, or a link past its expiry, is
/// refused with 403).
///
/// **A link is a bearer secret**: whoever holds it can download the
/// export until it expires, without logging in (that is what makes it
/// usable from a browser, `curl` or a spreadsheet). Keep `valid_for`
/// short, serve it over HTTPS only, and do not log URLs with their query
/// strings. Every instance behind one load balancer needs the same key;
/// changing the key invalidates every link handed out.
///
/// ```
/// use std::time::Duration;
/// use async_query::http::{DownloadLinks, HttpOptions};
/// let key = std::env::var("EXPORT_LINK_KEY")
///     .unwrap_or_else(|_| "an example key of at least 32 bytes!!".into());
/// let links = DownloadLinks::new(key, Duration::from_secs(15 * 60))?;
/// let options = HttpOptions::default().with_download_links(links);
/// # let _ = options;
/// # Ok::<(), async_query::Error>(())
/// ```
#[derive(Clone)]
pub struct DownloadLinks {
    /// Keyed once; cloned for each signature.
    mac: HmacSha256,
    valid_for: Duration,
}

impl fmt::Debug for DownloadLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DownloadLinks")
            .field("key", &"<hidden>")
            .field("valid_for", &self.valid_for)
            .finish()
    }
}

/// Why a signed link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkRefused {
    /// The signature does not match the id and expiry (changed, or made
    /// with another key), or is not hex.
    BadSignature,
    /// The link's expiry has passed.
    Expired,
}

impl DownloadLinks {
    /// Links signed with `key` (at least [`MIN_KEY_BYTES`] bytes, for
    /// example 32 random bytes from a secret store) and valid for
    /// `valid_for` after they are handed out.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the key is shorter than [`MIN_KEY_BYTES`] or
    /// `valid_for` is zero.
    pub fn new(key: impl AsRef<[u8]>, valid_for: Duration) -> Result<Self> {
        let key = key.as_ref();
        if key.len() < MIN_KEY_BYTES {
            return Err(Error::Config {
                reason: format!(
                    "a download link key needs at least {MIN_KEY_BYTES} bytes, got {}",
                    key.len()
                ),
            });
        }
        if valid_for.is_zero() {
            return Err(Error::Config {
                reason: "download links must be valid for more than zero time".into(),
            });
        }
        let mac = HmacSha256::new_from_slice(key).map_err(|e| Error::Config {
            reason: format!("a download link key was refused: {e}"),
        })?;
        Ok(DownloadLinks { mac, valid_for })
    }

    /// How long a link is valid after it is handed out.
    pub fn valid_for(&self) -> Duration {
        self.valid_for
    }

    /// The query string (`expires=<unix seconds>&signature=<hex>`) of a
    /// link to job `id`'s export, handed out at `now`.
    pub fn sign(&self, id: Uuid, now: DateTime<Utc>) -> String {
        let valid_for = i64::try_from(self.valid_for.as_secs()).unwrap_or(i64::MAX);
        let expires = now.timestamp().saturating_add(valid_for.max(1));
        let signature = self.mac(id, expires).finalize().into_bytes();
        let hex: String = signature.iter().map(|b| format!("{b:02x}")).collect();
        format!("expires={expires}&signature={hex}")
    }

    /// Checks a link to job `id` with these `expires` and `signature` query
    /// values at `now`. The signature is compared in constant time.
    ///
    /// # Errors
    ///
    /// [`LinkRefused`] saying why.
    pub fn verify(
        &self,
        id: Uuid,
        expires: i64,
        signature: &str,
        now: DateTime<Utc>,
    ) -> std::result::Result<(), LinkRefused> {
        let bytes = decode_hex(signature).ok_or(LinkRefused::BadSignature)?;
        self.mac(id, expires)
            .verify_slice(&bytes)
            .map_err(|_| LinkRefused::BadSignature)?;
        // Only a genuine expiry is worth comparing with the clock.
        if now.timestamp() >= expires {
            return Err(LinkRefused::Expired);
        }
        Ok(())
    }

    fn mac(&self, id: Uuid, expires: i64) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(b"async-query export link v1\n");
        mac.update(id.as_bytes());
        mac.update(&expires.to_be_bytes());
        mac
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() % 2 != 0 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn links() -> DownloadLinks {
        DownloadLinks::new([7u8; 32], Duration::from_secs(600)).unwrap()
    }

    fn parts(query: &str) -> (i64, String) {
        let (expires, signature) = query.split_once('&').unwrap();
        (
            expires.trim_start_matches("expires=").parse().unwrap(),
            signature.trim_start_matches("signature=").to_owned(),
        )
    }

    #[test]
    fn a_link_holds_until_it_expires_and_only_for_its_job() {
        let links = links();
        let (id, now) = (Uuid::new_v4(), Utc::now());
        let (expires, signature) = parts(&links.sign(id, now));
        assert_eq!(expires, now.timestamp() + 600);
        assert_eq!(links.verify(id, expires, &signature, now), Ok(()));
        let later = now + TimeDelta::seconds(599);
        assert_eq!(links.verify(id, expires, &signature, later), Ok(()));
        let expired = now + TimeDelta::seconds(600);
        assert_eq!(
            links.verify(id, expires, &signature, expired),
            Err(LinkRefused::Expired)
        );
        // Another job, a later expiry, a changed signature, another key.
        let refused = Err(LinkRefused::BadSignature);
        assert_eq!(
            links.verify(Uuid::new_v4(), expires, &signature, now),
            refused
        );
        assert_eq!(links.verify(id, expires + 3600, &signature, now), refused);
        let mut changed = signature.clone().into_bytes();
        changed[0] = if changed[0] == b'0' { b'1' } else { b'0' };
        let changed = String::from_utf8(changed).unwrap();
        assert_eq!(links.verify(id, expires, &changed, now), refused);
        assert_eq!(links.verify(id, expires, "zz", now), refused);
        assert_eq!(links.verify(id, expires, "", now), refused);
        let other = DownloadLinks::new([8u8; 32], Duration::from_secs(600)).unwrap();
        assert_eq!(other.verify(id, expires, &signature, now), refused);
    }

    #[test]
    fn short_keys_and_zero_lifetimes_are_refused() {
        assert!(matches!(
            DownloadLinks::new([1u8; 31], Duration::from_secs(1)),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            DownloadLinks::new([1u8; 32], Duration::ZERO),
            Err(Error::Config { .. })
        ));
        let debug = format!("{:?}", links());
        assert!(!debug.contains("7, 7"), "{debug}");
    }
}
