//! The footer's digest of the lines before it: BLAKE3 from format 1.9 on, SHA-256 before.

use sha2::{Digest as _, Sha256};

use super::record::Footer;

/// The first minor version whose footer carries `blake3` rather than `sha256`.
pub const BLAKE3_SINCE_MINOR: u32 = 9;

/// A digest algorithm of the footer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Blake3,
}

impl Algorithm {
    /// The algorithm of a trace of format version 1.`minor`.
    pub fn of_minor(minor: u32) -> Self {
        if minor >= BLAKE3_SINCE_MINOR {
            Algorithm::Blake3
        } else {
            Algorithm::Sha256
        }
    }

    /// The algorithm of a trace whose header says `version` (`1.9`); the current one when
    /// the version cannot be read (the reader refuses such a trace anyway).
    pub fn of_version(version: &str) -> Self {
        let minor = version
            .split_once('.')
            .and_then(|(_, minor)| minor.parse().ok())
            .unwrap_or(super::FORMAT_MINOR);
        Self::of_minor(minor)
    }

    /// Its name as people write it.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Blake3 => "BLAKE3",
        }
    }

    /// The footer's key that holds it.
    pub fn key(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }

    /// The footer's hex digest of this algorithm, when it has one.
    pub fn of_footer(self, footer: &Footer) -> Option<&str> {
        match self {
            Algorithm::Sha256 => footer.sha256.as_deref(),
            Algorithm::Blake3 => footer.blake3.as_deref(),
        }
    }

    /// Sets the footer's digest of this algorithm.
    pub fn set_in(self, footer: &mut Footer, hex: String) {
        match self {
            Algorithm::Sha256 => footer.sha256 = Some(hex),
            Algorithm::Blake3 => footer.blake3 = Some(hex),
        }
    }
}

/// A running digest of one of the algorithms.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    // Boxed: BLAKE3's state is nearly 2 KiB.
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Self {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Blake3(_) => Algorithm::Blake3,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// The lowercase hex digest of everything so far; starts over.
    pub fn finalize_hex(&mut self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize_reset()),
            Hasher::Blake3(h) => {
                let hex = h.finalize().to_hex().to_string();
                h.reset();
                hex
            }
        }
    }
}

/// The hex digest of `bytes` by `algorithm`.
pub fn hex_digest(algorithm: Algorithm, bytes: &[u8]) -> String {
    let mut h = Hasher::new(algorithm);
    h.update(bytes);
    h.finalize_hex()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_algorithm_gives_its_published_digest() {
        // The empty input's digests, as published with each algorithm.
        assert_eq!(
            hex_digest(Algorithm::Sha256, b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            hex_digest(Algorithm::Blake3, b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn pieces_hash_as_the_whole_and_finalizing_starts_over() {
        for alg in [Algorithm::Sha256, Algorithm::Blake3] {
            let mut h = Hasher::new(alg);
            h.update(b"{\"type\":\"alloc\"}\n");
            h.update(b"{\"type\":\"free\"}\n");
            assert_eq!(
                h.finalize_hex(),
                hex_digest(alg, b"{\"type\":\"alloc\"}\n{\"type\":\"free\"}\n")
            );
            assert_eq!(h.finalize_hex(), hex_digest(alg, b""), "{alg:?}");
        }
    }

    #[test]
    fn the_version_chooses_the_algorithm() {
        assert_eq!(Algorithm::of_minor(0), Algorithm::Sha256);
        assert_eq!(Algorithm::of_minor(8), Algorithm::Sha256);
        assert_eq!(Algorithm::of_minor(9), Algorithm::Blake3);
        assert_eq!(Algorithm::of_minor(12), Algorithm::Blake3);
        assert_eq!(Algorithm::of_version("1.0"), Algorithm::Sha256);
        assert_eq!(Algorithm::of_version("1.8"), Algorithm::Sha256);
        assert_eq!(Algorithm::of_version("1.9"), Algorithm::Blake3);
        assert_eq!(Algorithm::of_version("1.10"), Algorithm::Blake3);
    }
}
