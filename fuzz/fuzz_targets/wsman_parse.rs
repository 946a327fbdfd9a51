//! Fuzzes the WS-MAN envelope parser with arbitrary bytes, as either peer could send them.
//!
//! Parses the input under the default limits and under tiny ones (so that the limit checks are
//! reached with small inputs too), and checks for every envelope it accepts: the body is within
//! the depth and element limits; the typed extractions (fault, Enumerate and Pull responses,
//! return value) do not panic; the envelope writes back to a document that parses to the same
//! envelope. The HTTP digest header parsers get the same bytes as text, and what they accept
//! must write back to a header that parses to the same value.

#![no_main]

use libfuzzer_sys::fuzz_target;
use protocols::http_digest::{Authorization, Challenge, MAX_HEADER_LEN};
use protocols::wsman::{return_value, Element, EnumerateResponse, Envelope, Limits, PullResponse};

fuzz_target!(|input: &[u8]| {
    let tiny = Limits { max_document_len: 256, max_depth: 4, max_elements: 8, max_attributes: 2 };
    for limits in [Limits::default(), tiny] {
        let Ok(envelope) = Envelope::parse(input, &limits) else { continue };
        // Envelope, Header and Body are above or beside the body's children.
        let (elements, depth) = size(&envelope.body);
        assert!(elements + 2 <= limits.max_elements, "{elements} elements under {limits:?}");
        assert!(depth < limits.max_depth, "depth {depth} under {limits:?}");
        let _ = envelope.fault();
        let _ = EnumerateResponse::from_envelope(&envelope);
        let _ = PullResponse::from_envelope(&envelope);
        let _ = return_value(&envelope);
        let written = envelope.to_bytes().expect("an envelope that parsed can be written");
        let again = Envelope::parse(&written, &Limits { max_document_len: usize::MAX, ..Limits::default() })
            .expect("a written envelope parses");
        assert_eq!(again, envelope, "re-written as {}", String::from_utf8_lossy(&written));
    }
    if let Ok(text) = std::str::from_utf8(input) {
        if let Ok(challenge) = Challenge::parse(text) {
            if let Some(header) = challenge.to_header_value().ok().filter(|h| h.len() <= MAX_HEADER_LEN) {
                assert_eq!(Challenge::parse(&header), Ok(challenge));
            }
        }
        if let Ok(auth) = Authorization::parse(text) {
            if let Some(header) = auth.to_header_value().ok().filter(|h| h.len() <= MAX_HEADER_LEN) {
                assert_eq!(Authorization::parse(&header), Ok(auth));
            }
        }
    }
});

/// The number of elements in `element`'s tree and its depth (1 for a leaf).
fn size(element: &Element) -> (usize, usize) {
    element.children.iter().map(size).fold((1, 1), |(count, depth), (c, d)| (count + c, depth.max(d + 1)))
}
