//! W3C Trace Context: the request's `traceparent` kept with a new parent id for this hop
//! (the gateway is a span of the trace), or a new trace started when it is missing or
//! invalid; `tracestate` passed on with a valid `traceparent`, dropped with a new trace
//! (it belongs to the trace it came with). The trace id goes into the access log.

use http::header::{HeaderMap, HeaderName, HeaderValue};

pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The sampled flag: a trace the gateway starts is offered for sampling, so an app that
/// samples by its parent's decision records it.
const SAMPLED: u8 = 0x01;

/// The trace of one request as it goes upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// 32 lower-case hex digits.
    pub trace_id: TraceId,
    /// The `traceparent` the upstream gets: version 00, the trace id, this hop's parent
    /// id, the flags.
    pub traceparent: HeaderValue,
    /// Whether the request's trace goes on (else a new one starts).
    pub continued: bool,
}

/// A trace id as 32 lower-case hex digits, kept without an allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// This hop of the request's trace, with `span_id` (8 random bytes) as its parent id.
pub fn hop(headers: &HeaderMap, span_id: u64) -> Hop {
    let mut values = headers.get_all(&TRACEPARENT).iter();
    let parsed = match (values.next(), values.next()) {
        (Some(one), None) => parse(one.as_bytes()),
        _ => None,
    };
    let (trace_id, flags, continued) = match parsed {
        Some((trace_id, flags)) => (trace_id, flags, true),
        None => {
            let mut id = [0u8; 32];
            // Not all zero: a zero trace id is invalid.
            let high = fastrand::u64(..);
            let low = if high == 0 {
                fastrand::u64(1..)
            } else {
                fastrand::u64(..)
            };
            hex_into(&mut id[..16], &high.to_be_bytes());
            hex_into(&mut id[16..], &low.to_be_bytes());
            (TraceId(id), SAMPLED, false)
        }
    };
    let mut value = *b"00-00000000000000000000000000000000-0000000000000000-00";
    value[3..35].copy_from_slice(&trace_id.0);
    hex_into(&mut value[36..52], &span_id.max(1).to_be_bytes());
    hex_into(&mut value[53..55], &[flags]);
    Hop {
        traceparent: HeaderValue::from_bytes(&value).expect("hex digits and dashes"),
        trace_id,
        continued,
    }
}

/// Writes `bytes` into `out` as lower-case hex, two digits each.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// Sets this hop's `traceparent` on the request to the upstream, and drops `tracestate`
/// when the trace is new.
pub fn rewrite(headers: &mut HeaderMap, hop: &Hop) {
    headers.insert(&TRACEPARENT, hop.traceparent.clone());
    if !hop.continued {
        headers.remove(&TRACESTATE);
    }
}

/// The trace id and flags of a `traceparent` value, if it is valid: a version other than
/// `ff` (00 exactly 55 characters; a later one at least that, with a `-` after them), a
/// trace id and parent id of lower-case hex that are not all zero, and the flags.
pub fn parse(value: &[u8]) -> Option<(TraceId, u8)> {
    let lower_hex = |b: &[u8]| {
        b.iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
    };
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let (version, trace_id, parent_id, flags) =
        (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    if !lower_hex(version) || version == b"ff" {
        return None;
    }
    let exact = version == b"00";
    if (exact && value.len() != 55) || (!exact && value.len() > 55 && value[55] != b'-') {
        return None;
    }
    let zero = |b: &[u8]| b.iter().all(|&c| c == b'0');
    if !lower_hex(trace_id) || zero(trace_id) || !lower_hex(parent_id) || zero(parent_id) {
        return None;
    }
    if !lower_hex(flags) {
        return None;
    }
    let flags = u8::from_str_radix(std::str::from_utf8(flags).ok()?, 16).ok()?;
    Some((TraceId(trace_id.try_into().ok()?), flags))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const GIVEN: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn a_valid_traceparent_goes_on_with_a_new_parent_id_and_its_tracestate() {
        let mut h = headers(&[("traceparent", GIVEN), ("tracestate", "vendor=x")]);
        let hop = hop(&h, 0xabc);
        assert_eq!(hop.trace_id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            hop.traceparent,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
        rewrite(&mut h, &hop);
        assert_eq!(h["traceparent"], hop.traceparent);
        assert_eq!(h["tracestate"], "vendor=x");
    }

    #[test]
    fn an_invalid_or_missing_traceparent_starts_a_new_trace_without_tracestate() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut h = headers(&[("traceparent", bad), ("tracestate", "vendor=x")]);
            let hop = hop(&h, 7);
            assert!(!hop.continued, "{bad}");
            assert_ne!(hop.trace_id.as_str(), "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_eq!(parse(hop.traceparent.as_bytes()).unwrap().0, hop.trace_id);
            rewrite(&mut h, &hop);
            assert!(h.get("tracestate").is_none());
        }
        // Two traceparents are no traceparent.
        let two = headers(&[("traceparent", GIVEN), ("traceparent", GIVEN)]);
        assert!(!hop(&two, 7).continued);
        // A later version is read by its first fields.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(hop(&headers(&[("traceparent", later)]), 7).continued);
        assert!(!hop(&HeaderMap::new(), 7).continued);
    }

    proptest! {
        /// Whatever the client sends, the upstream gets a valid traceparent, and the trace
        /// goes on exactly when the client's was valid.
        #[test]
        fn any_value_gives_a_valid_traceparent(value in "[ -~]{0,80}", span in any::<u64>()) {
            let h = match HeaderValue::from_str(&value) {
                Ok(v) => { let mut h = HeaderMap::new(); h.insert(&TRACEPARENT, v); h }
                Err(_) => HeaderMap::new(),
            };
            let hop = hop(&h, span);
            let (trace_id, _) = parse(hop.traceparent.as_bytes()).expect("valid");
            prop_assert_eq!(&trace_id, &hop.trace_id);
            prop_assert_eq!(hop.continued, parse(value.as_bytes()).is_some());
        }

        #[test]
        fn valid_values_keep_their_trace_id(
            trace in "[0-9a-f]{31}[1-9a-f]",
            parent in "[0-9a-f]{15}[1-9a-f]",
            flags in "[0-9a-f]{2}",
        ) {
            let value = format!("00-{trace}-{parent}-{flags}");
            let parsed = parse(value.as_bytes()).map(|(t, _)| t.as_str().to_string());
            prop_assert_eq!(parsed, Some(trace));
        }
    }
}
