//! `[compression]`: which responses are compressed, with what.

use super::validate::parse_size;
use super::{file, Validator};

/// A content coding the gateway compresses with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Zstd,
    Brotli,
    Gzip,
}

impl Coding {
    /// Its name in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Zstd => "zstd",
            Coding::Brotli => "br",
            Coding::Gzip => "gzip",
        }
    }

    /// The extension of a precompressed file next to the original.
    pub fn extension(self) -> &'static str {
        match self {
            Coding::Zstd => "zst",
            Coding::Brotli => "br",
            Coding::Gzip => "gz",
        }
    }
}

#[derive(Debug, Clone)]
pub struct CompressionConfig {
    /// Preference order among what the client accepts.
    pub algorithms: Vec<Coding>,
    /// Bodies known to be smaller are sent as they are.
    pub min_length: u64,
    /// `text/*`, or exact types, lower-case.
    pub types: Vec<String>,
}

pub const DEFAULT_ALGORITHMS: [Coding; 3] = [Coding::Zstd, Coding::Brotli, Coding::Gzip];
/// Below this, compression saves too little to be worth its CPU and header bytes.
pub const DEFAULT_MIN_LENGTH: u64 = 1024;
pub const DEFAULT_TYPES: [&str; 8] = [
    "text/*",
    "application/json",
    "application/javascript",
    "application/xml",
    "application/manifest+json",
    "application/wasm",
    "image/svg+xml",
    "font/ttf",
];

impl Validator<'_> {
    pub(super) fn compression(&mut self, c: &file::CompressionSection) -> CompressionConfig {
        let algorithms = match &c.algorithms {
            None => DEFAULT_ALGORITHMS.to_vec(),
            Some(list) => {
                let mut out = Vec::new();
                for name in list.get_ref() {
                    match name.as_str() {
                        "zstd" => out.push(Coding::Zstd),
                        "br" => out.push(Coding::Brotli),
                        "gzip" => out.push(Coding::Gzip),
                        other => self.error(
                            list.span(),
                            "compression.algorithms",
                            format!("unknown algorithm {other:?} (expected \"zstd\", \"br\" or \"gzip\")"),
                        ),
                    }
                }
                if out.is_empty() {
                    self.error(list.span(), "compression.algorithms", "needs at least one");
                }
                out
            }
        };
        let min_length = match &c.min_length {
            None => DEFAULT_MIN_LENGTH,
            Some(v) => match parse_size(v.get_ref()) {
                Ok(n) => n as u64,
                Err(e) => {
                    self.error(v.span(), "compression.min_length", e);
                    DEFAULT_MIN_LENGTH
                }
            },
        };
        let types = match &c.types {
            None => DEFAULT_TYPES.iter().map(|t| t.to_string()).collect(),
            Some(list) => {
                for t in list.get_ref() {
                    if !t.contains('/') {
                        self.error(
                            list.span(),
                            "compression.types",
                            format!("{t:?} is not a media type (like \"text/*\" or \"application/json\")"),
                        );
                    }
                }
                list.get_ref()
                    .iter()
                    .map(|t| t.to_ascii_lowercase())
                    .collect()
            }
        };
        CompressionConfig {
            algorithms,
            min_length,
            types,
        }
    }
}
