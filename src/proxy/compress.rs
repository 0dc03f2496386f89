//! The compression stage: a response the client accepts compressed, of a type worth it,
//! is compressed on its way out, streaming. What the upstream sends in pieces (server-sent
//! events) reaches the client piece by piece: whenever the source pauses, what was
//! compressed so far is flushed.
//!
//! Memory per compressing response is the encoder's state, bounded by the levels and
//! windows chosen here for a proxy. Measured with `benches/files.sh` (RSS per stream while
//! 1000 slow clients take a compressed 1 MiB JSON, nginx's gzip about 350 KiB) and per
//! MiB of CPU against nginx's gzip level 1, its default:
//! - gzip level 2, 32 KiB window: about 340 KiB, 0.86x the CPU, a better ratio than
//!   nginx's level 1 (zlib-rs's level 1 is a faster, weaker algorithm than zlib's);
//! - zstd level 1, 64 KiB window: about 200 KiB of encoder, half the CPU, a ratio near
//!   gzip level 9 (level 3 measured no better on JSON, at four times the memory; a
//!   256 KiB window no better either, at twice the memory);
//! - brotli quality 1, 64 KiB window, fed 32 KiB at a time: about 210 KiB, 0.6x to
//!   0.85x the CPU, a ratio near gzip level 1's on JSON and better on JavaScript. Quality 2
//!   compresses much better (between gzip 6's ratio and half of it) but holds about
//!   950 KiB per stream, and the encoder takes larger tables (350 KiB and more) once it
//!   is given more than 32 KiB at once; hence the staging below.

use super::body::ResponseBody;
use crate::config::{Coding, CompressionConfig};
use crate::wire::has_token;
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Response, StatusCode};
use http_body::Body as _;
use std::io::Write;

/// The codings of `algorithms` the client's `Accept-Encoding` accepts, best first: by
/// q-value, then in the order of `algorithms`. A coding not named is accepted only
/// through `*`; `q=0` refuses.
pub fn acceptable(accept: Option<&HeaderValue>, algorithms: &[Coding]) -> Vec<Coding> {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return Vec::new();
    };
    let mut weighted: Vec<(u16, usize, Coding)> = Vec::new();
    for (order, &coding) in algorithms.iter().enumerate() {
        let mut named = None;
        let mut star = None;
        for item in accept.split(',') {
            let mut parts = item.split(';');
            let name = parts.next().unwrap_or_default().trim();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
                .next()
                .map_or(1000, parse_q);
            if name.eq_ignore_ascii_case(coding.token()) {
                named = Some(q);
            } else if name == "*" {
                star = Some(q);
            }
        }
        if let Some(q) = named.or(star).filter(|&q| q > 0) {
            weighted.push((q, order, coding));
        }
    }
    weighted.sort_by_key(|&(q, order, _)| (std::cmp::Reverse(q), order));
    weighted.into_iter().map(|(_, _, c)| c).collect()
}

/// A q-value in thousandths (`0.5` is 500); a malformed one counts as 0.
fn parse_q(text: &str) -> u16 {
    let text = text.trim();
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let whole: u16 = match whole {
        "0" => 0,
        "1" => 1000,
        _ => return 0,
    };
    let digits: String = fraction.chars().take(3).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return 0;
    }
    let fraction = format!("{digits:0<3}").parse::<u16>().unwrap_or(0);
    (whole + fraction).min(1000)
}

/// What the stage needs of the request.
pub struct Asked<'a> {
    pub method: &'a Method,
    pub accept: Option<&'a HeaderValue>,
}

/// The stage: compresses `response` if everything allows it.
pub fn response(
    mut response: Response<ResponseBody>,
    asked: &Asked<'_>,
    settings: &CompressionConfig,
) -> Response<ResponseBody> {
    let status = response.status();
    if asked.method == Method::HEAD
        || matches!(
            status,
            StatusCode::PARTIAL_CONTENT | StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED
        )
        || status.is_informational()
    {
        return response;
    }
    let headers = response.headers();
    if headers.contains_key(header::CONTENT_ENCODING)
        || has_token(headers, &header::CACHE_CONTROL, "no-transform")
        || !type_matches(headers, &settings.types)
    {
        return response;
    }
    if response
        .body()
        .size_hint()
        .exact()
        .is_some_and(|n| n < settings.min_length)
    {
        return response;
    }
    let Some(&coding) = acceptable(asked.accept, &settings.algorithms).first() else {
        return response;
    };
    let headers = response.headers_mut();
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(
        header::CONTENT_ENCODING,
        HeaderValue::from_static(coding.token()),
    );
    add_vary(headers);
    if let Some(etag) = headers.get(header::ETAG) {
        if !etag.as_bytes().starts_with(b"W/") {
            let mut weak = b"W/".to_vec();
            weak.extend_from_slice(etag.as_bytes());
            if let Ok(weak) = HeaderValue::from_bytes(&weak) {
                headers.insert(header::ETAG, weak);
            }
        }
    }
    response.body_mut().compress(Encoder::new(coding));
    response
}

/// `Vary: Accept-Encoding`, once.
pub fn add_vary(headers: &mut HeaderMap) {
    if !has_token(headers, &header::VARY, "accept-encoding")
        && !has_token(headers, &header::VARY, "*")
    {
        headers.append(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

fn type_matches(headers: &HeaderMap, types: &[String]) -> bool {
    let Some(content_type) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    // `types` are lower case (config): compared without a lower-cased copy per response.
    types.iter().any(|t| match t.strip_suffix("/*") {
        Some(top) => essence
            .split('/')
            .next()
            .is_some_and(|e| e.eq_ignore_ascii_case(top)),
        None => essence.eq_ignore_ascii_case(t),
    })
}

/// A streaming compressor writing into a buffer that each call empties.
pub enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<BrotliStream>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
    Done,
}

const GZIP_LEVEL: u32 = 2;
const BROTLI_QUALITY: u8 = 1;
const BROTLI_WINDOW_LOG: u8 = 16;
/// At quality 1 the encoder compresses each piece it is given on its own: pieces of 8 KiB
/// (one upstream read) compress worse than gzip, pieces over 32 KiB switch it to tables
/// of 350 KiB and more.
const BROTLI_PIECE: usize = 32 * 1024;
const ZSTD_LEVEL: i32 = 1;
const ZSTD_WINDOW_LOG: u32 = 16;

impl Encoder {
    pub fn new(coding: Coding) -> Self {
        match coding {
            Coding::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(GZIP_LEVEL),
            )),
            Coding::Brotli => Encoder::Brotli(Box::new(BrotliStream::new())),
            Coding::Zstd => {
                let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
                    .expect("a zstd level in range");
                let _ = encoder.window_log(ZSTD_WINDOW_LOG);
                Encoder::Zstd(encoder)
            }
        }
    }

    /// Compresses `data`; returns what is ready to send (often nothing yet).
    pub fn write(&mut self, data: &[u8]) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.write_all(data)?,
            Encoder::Brotli(e) => e.write(data)?,
            Encoder::Zstd(e) => e.write_all(data)?,
            Encoder::Done => {}
        }
        Ok(self.take())
    }

    /// Everything written so far, compressed, ready to send (the source paused).
    pub fn flush(&mut self) -> std::io::Result<Bytes> {
        match self {
            Encoder::Gzip(e) => e.flush()?,
            Encoder::Brotli(e) => e.flush()?,
            Encoder::Zstd(e) => e.flush()?,
            Encoder::Done => {}
        }
        Ok(self.take())
    }

    /// The end of the stream.
    pub fn finish(&mut self) -> std::io::Result<Bytes> {
        let out = match std::mem::replace(self, Encoder::Done) {
            Encoder::Gzip(e) => e.finish()?,
            Encoder::Brotli(e) => e.finish()?,
            Encoder::Zstd(e) => e.finish()?,
            Encoder::Done => Vec::new(),
        };
        Ok(Bytes::from(out))
    }

    fn take(&mut self) -> Bytes {
        let buffer = match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.encoder.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
            Encoder::Done => return Bytes::new(),
        };
        Bytes::from(std::mem::take(buffer))
    }
}

/// A brotli encoder given its input in pieces of `BROTLI_PIECE`, or less at a flush.
pub struct BrotliStream {
    encoder: brotlic::CompressorWriter<Vec<u8>>,
    piece: Vec<u8>,
}

impl BrotliStream {
    fn new() -> Self {
        let encoder = brotlic::BrotliEncoderOptions::new()
            .quality(brotlic::Quality::new(BROTLI_QUALITY).expect("a brotli quality in range"))
            .window_size(
                brotlic::WindowSize::new(BROTLI_WINDOW_LOG).expect("a brotli window in range"),
            )
            .build()
            .expect("brotli encoder parameters in range");
        BrotliStream {
            encoder: brotlic::CompressorWriter::with_encoder(encoder, Vec::new()),
            piece: Vec::new(),
        }
    }

    fn write(&mut self, mut data: &[u8]) -> std::io::Result<()> {
        while !data.is_empty() {
            let (taken, rest) = data.split_at((BROTLI_PIECE - self.piece.len()).min(data.len()));
            self.piece.extend_from_slice(taken);
            data = rest;
            if self.piece.len() == BROTLI_PIECE {
                self.give_piece()?;
            }
        }
        Ok(())
    }

    fn give_piece(&mut self) -> std::io::Result<()> {
        if !self.piece.is_empty() {
            self.encoder.write_all(&self.piece)?;
            self.piece.clear();
        }
        Ok(())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.give_piece()?;
        self.encoder.flush()
    }

    fn finish(mut self) -> std::io::Result<Vec<u8>> {
        self.give_piece()?;
        Ok(self.encoder.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepted(header: &str) -> Vec<&'static str> {
        let value = HeaderValue::from_str(header).unwrap();
        acceptable(Some(&value), &[Coding::Zstd, Coding::Brotli, Coding::Gzip])
            .into_iter()
            .map(Coding::token)
            .collect()
    }

    #[test]
    fn the_highest_q_value_wins_then_the_configured_order() {
        assert_eq!(accepted("gzip, deflate, br"), ["br", "gzip"]);
        assert_eq!(accepted("gzip;q=1, br;q=0.5"), ["gzip", "br"]);
        assert_eq!(accepted("br;q=0, *"), ["zstd", "gzip"]);
        assert_eq!(accepted("gzip;q=0"), Vec::<&str>::new());
        assert_eq!(accepted("identity"), Vec::<&str>::new());
        assert_eq!(accepted("zstd;q=0.001, gzip;q=0.002"), ["gzip", "zstd"]);
        assert_eq!(accepted("gzip;q=abc, br"), ["br"]);
        assert!(acceptable(None, &[Coding::Gzip]).is_empty());
    }

    #[test]
    fn each_coding_round_trips_and_flushes_what_it_has() {
        let text = "data: event\n\n".repeat(100);
        for coding in [Coding::Gzip, Coding::Brotli, Coding::Zstd] {
            let mut e = Encoder::new(coding);
            let mut out = e.write(text.as_bytes()).unwrap().to_vec();
            let flushed = e.flush().unwrap();
            assert!(!flushed.is_empty(), "{coding:?} flushes");
            out.extend_from_slice(&flushed);
            out.extend_from_slice(&e.finish().unwrap());
            let mut back = Vec::new();
            match coding {
                Coding::Gzip => {
                    std::io::Read::read_to_end(
                        &mut flate2::read::GzDecoder::new(&out[..]),
                        &mut back,
                    )
                    .unwrap();
                }
                Coding::Brotli => {
                    brotli::BrotliDecompress(&mut &out[..], &mut back).unwrap();
                }
                Coding::Zstd => back = zstd::decode_all(&out[..]).unwrap(),
            }
            assert_eq!(back, text.as_bytes(), "{coding:?}");
            assert!(out.len() < text.len() / 4, "{coding:?} compresses");
        }
    }

    #[test]
    fn brotli_is_given_the_same_pieces_however_the_upstream_cuts_the_body() {
        let text: String = (0..6000)
            .map(|i| {
                format!(
                    "{{\"id\":{i},\"name\":\"user{i:05}\",\"score\":{}}},",
                    i * 7 % 1000
                )
            })
            .collect();
        let encode = |cut: usize| {
            let mut e = Encoder::new(Coding::Brotli);
            let mut out = Vec::new();
            for part in text.as_bytes().chunks(cut) {
                out.extend_from_slice(&e.write(part).unwrap());
            }
            out.extend_from_slice(&e.finish().unwrap());
            out
        };
        let whole = encode(text.len());
        assert_eq!(encode(1000), whole);
        assert_eq!(encode(8192), whole);
        assert_eq!(encode(BROTLI_PIECE + 1), whole);
        let mut back = Vec::new();
        brotli::BrotliDecompress(&mut &whole[..], &mut back).unwrap();
        assert_eq!(back, text.as_bytes());
    }
}
