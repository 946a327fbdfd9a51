//! The HTTP responder's parsing and answers, fed through its channel handler.

use super::*;

const UUID: Uuid = Uuid::from_u128(0x12345678_9abc_def0_1234_56789abcdef0);

struct Harness {
    handler: HttpChannel,
    out: BytesMut,
    close: bool,
    limit: usize,
}

impl Harness {
    fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    fn with_limits(limits: Limits) -> Self {
        Self {
            handler: HttpChannel::new(UUID, 16992, tracing::Level::INFO, limits),
            out: BytesMut::new(),
            close: false,
            limit: 256 * 1024,
        }
    }

    /// Offers `data` once; returns the bytes taken.
    fn offer(&mut self, data: &[u8]) -> usize {
        let mut outbox = Outbox::new(&mut self.out, self.limit, &mut self.close);
        self.handler.on_data(data, &mut outbox)
    }

    /// Offers all of `data`, as the driver would, until taken.
    fn feed(&mut self, data: &[u8]) {
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.offer(rest);
            assert!(n > 0, "handler took nothing");
            rest = &rest[n..];
        }
    }

    fn responses(&self) -> Vec<(u16, String, String)> {
        split_responses(&self.out)
    }
}

/// (status, head, body) of each response in `bytes`.
fn split_responses(mut bytes: &[u8]) -> Vec<(u16, String, String)> {
    let mut responses = Vec::new();
    while !bytes.is_empty() {
        let end = find(bytes, b"\r\n\r\n").expect("complete head");
        let head = std::str::from_utf8(&bytes[..end]).unwrap().to_owned();
        let status: u16 = head[9..12].parse().unwrap();
        let len: usize =
            head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).expect("Content-Length").parse().unwrap();
        let body = std::str::from_utf8(&bytes[end + 4..end + 4 + len]).unwrap().to_owned();
        responses.push((status, head, body));
        bytes = &bytes[end + 4 + len..];
    }
    responses
}

const UNAUTHENTICATED: &[u8] =
    b"POST /wsman HTTP/1.1\r\nHost: 127.0.0.1:16992\r\nContent-Type: application/soap+xml\r\nContent-Length: 5\r\n\r\nhello";

fn authenticated(body: &str) -> Vec<u8> {
    format!(
        "POST /wsman HTTP/1.1\r\nHost: 127.0.0.1:16992\r\nAuthorization: Digest username=\"admin\", \
         realm=\"Digest:X\", nonce=\"n\", uri=\"/wsman\", response=\"r\", qop=auth, nc=00000001, \
         cnonce=\"c\"\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn unauthenticated_request_gets_a_digest_challenge() {
    let mut h = Harness::new();
    h.feed(UNAUTHENTICATED);
    let responses = h.responses();
    assert_eq!(responses.len(), 1);
    let (status, head, _) = &responses[0];
    assert_eq!(*status, 401);
    let challenge = head.lines().find_map(|l| l.strip_prefix("WWW-Authenticate: ")).expect("challenge");
    assert!(challenge.starts_with("Digest realm=\"Digest:123456789ABCDEF0123456789ABCDEF0\", nonce=\""), "{challenge}");
    assert!(challenge.ends_with("stale=\"false\", qop=\"auth\""), "{challenge}");
    assert!(!h.close, "keep-alive after a 401");
}

#[test]
fn request_split_into_single_bytes() {
    let mut h = Harness::new();
    for byte in UNAUTHENTICATED {
        assert_eq!(h.offer(std::slice::from_ref(byte)), 1);
    }
    let responses = h.responses();
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].0, 401);
}

#[test]
fn two_pipelined_requests_get_two_answers_in_order() {
    let mut h = Harness::new();
    let body = "<a:Envelope><a:Header><b:MessageID>uuid:42</b:MessageID></a:Header></a:Envelope>";
    let mut both = UNAUTHENTICATED.to_vec();
    both.extend_from_slice(&authenticated(body));
    assert_eq!(h.offer(&both), both.len());
    let responses = h.responses();
    assert_eq!(responses.iter().map(|r| r.0).collect::<Vec<_>>(), vec![401, 200]);
    let soap = &responses[1].2;
    assert!(soap.contains(&UUID.to_string()), "{soap}");
    assert!(soap.contains("<b:RelatesTo>uuid:42</b:RelatesTo>"), "{soap}");
    assert!(soap.contains("AMT_GeneralSettings"));
    assert!(responses[1].1.contains("Content-Type: application/soap+xml"));
    assert!(!h.close);
}

#[test]
fn body_split_across_offers() {
    let mut h = Harness::new();
    let request = authenticated("0123456789");
    let (a, b) = request.split_at(request.len() - 4);
    assert_eq!(h.offer(a), a.len());
    assert!(h.out.is_empty());
    assert_eq!(h.offer(b), b.len());
    assert_eq!(h.responses()[0].0, 200);
}

#[test]
fn oversized_headers_get_431_and_close() {
    let mut h = Harness::new();
    let mut request = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 9000));
    h.feed(&request);
    let responses = h.responses();
    assert_eq!(responses.len(), 1);
    assert_eq!(responses[0].0, 431);
    assert!(responses[0].1.contains("Connection: close"));
    assert!(h.close);
    // Later input is discarded.
    assert_eq!(h.offer(UNAUTHENTICATED), UNAUTHENTICATED.len());
    assert_eq!(h.responses().len(), 1);
}

#[test]
fn too_many_headers_get_431() {
    let mut h = Harness::with_limits(Limits { max_headers: 2, ..Limits::default() });
    h.feed(b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
    assert_eq!(h.responses()[0].0, 431);
    assert!(h.close);
}

#[test]
fn refusals() {
    let limits = Limits::default();
    let cases: &[(&[u8], u16)] = &[
        (b"POST /wsman HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST /wsman HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 501),
        (b"POST /wsman HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /wsman HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST /wsman HTTP/2.0\r\n\r\n", 400),
        (b"POST  /wsman HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n folded: x\r\n\r\n", 400),
        // A TLS ClientHello is refused from its first byte.
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),
        (b" GET / HTTP/1.1", 400),
    ];
    for (request, status) in cases {
        let err = parse_request(request, &limits).expect_err(&String::from_utf8_lossy(request));
        assert_eq!(err.status().0, *status, "{}", String::from_utf8_lossy(request));
    }
}

#[test]
fn partial_request_lines_wait() {
    let limits = Limits::default();
    for partial in [&b""[..], b"P", b"POST", b"POST /ws", b"POST /wsman HTTP/1.1\r\nHost: x\r\n"] {
        assert_eq!(parse_request(partial, &limits), Ok(None), "{}", String::from_utf8_lossy(partial));
    }
}

#[test]
fn connection_close_and_http10() {
    let mut h = Harness::new();
    h.feed(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
    assert!(h.close);
    assert!(h.responses()[0].1.contains("Connection: close"));

    let mut h = Harness::new();
    h.feed(b"GET / HTTP/1.0\r\n\r\n");
    assert!(h.close, "HTTP/1.0 closes by default");

    let mut h = Harness::new();
    h.feed(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert!(!h.close);
}

#[test]
fn head_request_has_no_body() {
    let mut h = Harness::new();
    h.feed(b"HEAD / HTTP/1.1\r\n\r\n");
    let out = std::str::from_utf8(&h.out).unwrap();
    assert!(out.starts_with("HTTP/1.1 401 "));
    assert!(out.ends_with("\r\n\r\n"), "{out}");
}

#[test]
fn stops_taking_input_without_room_and_resumes() {
    let mut h = Harness::new();
    h.limit = 100; // less than one response
    let mut three = Vec::new();
    for _ in 0..3 {
        three.extend_from_slice(UNAUTHENTICATED);
    }
    // One request is answered (overshooting the room); the other two are handed back.
    let taken = h.offer(&three);
    assert_eq!(taken, UNAUTHENTICATED.len());
    assert_eq!(h.responses().len(), 1);
    // No room: nothing taken.
    assert_eq!(h.offer(&three[taken..]), 0);
    // The driver sent the output: room again.
    h.out.clear();
    let taken2 = h.offer(&three[taken..]);
    assert_eq!(taken2, UNAUTHENTICATED.len());
    h.out.clear();
    assert_eq!(h.offer(&three[taken + taken2..]), UNAUTHENTICATED.len());
}

#[test]
fn element_text_finds_namespaced_elements() {
    assert_eq!(element_text(b"<a:H><b:MessageID>uuid:1</b:MessageID></a:H>", "MessageID"), Some("uuid:1"));
    assert_eq!(element_text(b"<MessageID> x </MessageID>", "MessageID"), Some("x"));
    assert_eq!(element_text(b"<MessageID/><b:MessageID>y</b:MessageID>", "MessageID"), Some("y"));
    assert_eq!(element_text(b"<MessageID><evil/></MessageID>", "MessageID"), None);
    assert_eq!(element_text(b"no xml", "MessageID"), None);
}
