//! A small blocking HTTP/1.1 client over `wasi:http`. The host sends each
//! request only if its host and port are on the connector's `allow` list;
//! otherwise [`Request::send`] fails with the host's reason
//! (`HTTP-request-denied`, `destination-IP-prohibited`).

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

/// Bytes written to the host per call (`wasi:io` allows 4 KiB at a time).
const WRITE_CHUNK: usize = 4096;
/// The largest response body read; beyond it the response is an error.
pub const MAX_BODY: usize = 16 << 20;

/// A request to send.
pub struct Request {
    method: Method,
    url: String,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
}

impl Request {
    pub fn get(url: &str) -> Self {
        Self::new(Method::Get, url, Vec::new())
    }

    pub fn post(url: &str, body: Vec<u8>) -> Self {
        Self::new(Method::Post, url, body)
    }

    fn new(method: Method, url: &str, body: Vec<u8>) -> Self {
        Self {
            method,
            url: url.to_string(),
            headers: Vec::new(),
            body,
        }
    }

    pub fn header(mut self, name: &str, value: impl AsRef<[u8]>) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.as_ref().to_vec()));
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(self) -> Result<Response, String> {
        let url = Url::parse(&self.url)?;
        let mut headers = self.headers;
        // Sized bodies, so receivers need not decode chunks.
        if !self.body.is_empty() && !headers.iter().any(|(n, _)| n == "content-length") {
            headers.push((
                "content-length".into(),
                self.body.len().to_string().into_bytes(),
            ));
        }
        let headers = Fields::from_list(&headers).map_err(|e| format!("request headers: {e:?}"))?;
        let req = OutgoingRequest::new(headers);
        let set = |ok: Result<(), ()>, what: &str| ok.map_err(|()| format!("bad {what}"));
        set(req.set_method(&self.method), "method")?;
        set(req.set_scheme(Some(&url.scheme)), "scheme")?;
        set(req.set_authority(Some(&url.authority)), "authority")?;
        set(req.set_path_with_query(Some(&url.path)), "path")?;
        let body = req.body().map_err(|()| "request body taken".to_string())?;
        let pending = outgoing_handler::handle(req, None).map_err(|e| error(&self.url, &e))?;
        // The host checks the allow list while the body is written: a
        // refusal (or a peer's reset) can close the body first, and its
        // reason comes as the response, so a failed write waits for that.
        let wrote = write_body(body, &self.body, &self.url);
        pending.subscribe().block();
        let res = match pending.get() {
            Some(Ok(Ok(res))) => res,
            Some(Ok(Err(e))) => return Err(error(&self.url, &e)),
            Some(Err(())) | None => {
                return Err(wrote
                    .err()
                    .unwrap_or_else(|| format!("{}: no response", self.url)))
            }
        };
        let status = res.status();
        let headers = res.headers().entries();
        let incoming = res
            .consume()
            .map_err(|()| "response body taken".to_string())?;
        let body = read_all(&incoming)?;
        drop(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// Writes the whole body and finishes it; on failure the body is dropped
/// unfinished, which fails the request on the host's side.
fn write_body(body: OutgoingBody, bytes: &[u8], url: &str) -> Result<(), String> {
    {
        let out = body
            .write()
            .map_err(|()| "request body stream".to_string())?;
        for chunk in bytes.chunks(WRITE_CHUNK) {
            out.blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the request body: {e:?}"))?;
        }
    }
    OutgoingBody::finish(body, None).map_err(|e| error(url, &e))
}

fn error(url: &str, e: &ErrorCode) -> String {
    format!("{url}: {e:?}")
}

fn read_all(incoming: &IncomingBody) -> Result<Vec<u8>, String> {
    let stream = incoming
        .stream()
        .map_err(|()| "response body stream".to_string())?;
    let mut body = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_BODY {
                    return Err(format!("response body over {MAX_BODY} bytes"));
                }
            }
            Err(StreamError::Closed) => return Ok(body),
            Err(e) => return Err(format!("reading the response: {e:?}")),
        }
    }
}

/// A response, read whole.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// Names in lower case, as sent.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (lower case), as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    /// Itself if the status is 2xx, else an error naming the status.
    pub fn ok(self) -> Result<Self, String> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let text: String = String::from_utf8_lossy(&self.body)
            .chars()
            .take(200)
            .collect();
        Err(format!("HTTP {}: {text}", self.status))
    }
}

/// The parts of an `http(s)://authority/path?query` URL a request needs.
struct Url {
    scheme: Scheme,
    authority: String,
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(r) = url.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (Scheme::Http, r)
        } else {
            return Err(format!("{url}: only http:// and https:// URLs"));
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
            Some(i) => (&rest[..i], rest[i..].to_string()),
            None => (rest, "/".to_string()),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url}: no host, or credentials in the URL"));
        }
        Ok(Url {
            scheme,
            authority: authority.to_string(),
            path,
        })
    }
}
