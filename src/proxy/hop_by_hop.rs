//! Headers that describe one connection rather than the message: they stop at the
//! gateway, both ways.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
/// ones that only make sense between a client and the gateway.
///
/// `Trailer` is not among them: it declares which trailer fields follow the body
/// (RFC 9110 §6.6.2), end to end.
static HOP_BY_HOP: [HeaderName; 7] = [
    // First: strip_hop_by_hop looks for the names it lists only when it is there.
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("http2-settings"),
];

/// The headers a Connection header names beyond `close` and the hop-by-hop ones (most
/// name only those: then nothing needs collecting).
fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = HeaderName> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| names_a_field(t))
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|n| n != header::HOST)
}

/// Whether a Connection token names a field to remove beyond the hop-by-hop ones
/// (`close` names none).
fn names_a_field(token: &[u8]) -> bool {
    !token.is_empty()
        && !token.eq_ignore_ascii_case(b"close")
        && !HOP_BY_HOP
            .iter()
            .any(|h| token.eq_ignore_ascii_case(h.as_str().as_bytes()))
}

/// Where `name` is in HOP_BY_HOP. Lengths first: nearly every other name has a length
/// none of them has, and is let go without a comparison.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    let name = name.as_str();
    if !matches!(name.len(), 2 | 7 | 10 | 14 | 16 | 17) {
        return None;
    }
    HOP_BY_HOP.iter().position(|h| h.as_str() == name)
}

/// Removes the headers named in Connection and the hop-by-hop ones. Host is never removed
/// this way: the request must keep saying which site it is for.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the fields is cheaper than a lookup per hop-by-hop name, and most
    // heads carry none or only `Connection: keep-alive`: only the names found are
    // removed, and the Connection list is read in the same pass.
    let mut present = [false; HOP_BY_HOP.len()];
    let mut names_fields = false;
    for (name, value) in headers.iter() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            if i == 0 {
                names_fields |= value
                    .as_bytes()
                    .split(|&b| b == b',')
                    .any(|t| names_a_field(t.trim_ascii()));
            }
        }
    }
    if names_fields {
        let named: Vec<HeaderName> = connection_tokens(headers).collect();
        for name in named {
            headers.remove(&name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, found)| *found) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn every_hop_by_hop_name_is_found_by_its_length_first() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::CONTENT_LENGTH), None);
    }

    #[test]
    fn each_hop_by_hop_header_goes_on_its_own_too() {
        for name in &HOP_BY_HOP {
            let mut headers = HeaderMap::new();
            headers.insert(name.clone(), HeaderValue::from_static("x"));
            headers.insert("x-kept", HeaderValue::from_static("yes"));
            strip_hop_by_hop(&mut headers);
            assert!(!headers.contains_key(name), "{name} was kept");
            assert!(headers.contains_key("x-kept"));
        }
    }

    proptest::proptest! {
        /// Whatever a head carries and its Connection lists (any case, spacing, empty
        /// items), the hop-by-hop fields and the ones Connection names go, Host stays,
        /// and every other field stays with all its values.
        #[test]
        fn only_hop_by_hop_and_named_fields_go(
            fields in proptest::collection::vec((0usize..10, 0u8..3), 0..12),
            lists in proptest::collection::vec(
                proptest::collection::vec((0usize..11, proptest::bool::ANY, 0usize..3), 0..5),
                0..3,
            ),
        ) {
            const NAMES: [&str; 10] = [
                "connection", "keep-alive", "te", "upgrade", "proxy-connection",
                "host", "x-a", "x-b", "x-c", "content-type",
            ];
            let mut headers = HeaderMap::new();
            for (name, value) in &fields {
                headers.append(NAMES[*name], HeaderValue::from(u16::from(*value)));
            }
            let mut named = Vec::new();
            for list in &lists {
                let mut value = String::new();
                for (token, upper, spaces) in list {
                    let token = NAMES.get(*token).copied().unwrap_or("close");
                    named.push(token);
                    let token = if *upper { token.to_uppercase() } else { token.to_string() };
                    value.push_str(&" ".repeat(*spaces));
                    value.push_str(&token);
                    value.push(',');
                }
                headers.append(header::CONNECTION, HeaderValue::from_str(&value).unwrap());
            }
            let before = headers.clone();
            strip_hop_by_hop(&mut headers);
            for name in NAMES {
                let hop = HOP_BY_HOP.iter().any(|h| h == name);
                let gone = hop || (named.contains(&name) && name != "host");
                if gone {
                    proptest::prop_assert!(!headers.contains_key(name), "{} kept", name);
                } else {
                    let kept: Vec<_> = headers.get_all(name).iter().collect();
                    let had: Vec<_> = before.get_all(name).iter().collect();
                    proptest::prop_assert_eq!(kept, had, "{}", name);
                }
            }
        }
    }
}
