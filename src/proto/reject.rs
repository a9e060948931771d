//! The answer to a request the gateway refuses: a status, a one-line
//! `text/plain` body that says what to fix, and the headers that tell the
//! client what to do next.

use http::{header, HeaderMap, HeaderValue, StatusCode};

use super::head;

/// A request the gateway will not upgrade, and what it answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub status: StatusCode,
    pub message: String,
    /// Extra answer headers that tell the client what to do next
    /// (`Retry-After`, `WWW-Authenticate`).
    pub headers: Vec<(header::HeaderName, HeaderValue)>,
    /// A backend's own answer, passed on as it is (its end-to-end headers
    /// are `headers`); `message` then only describes it for the log.
    pub body: Option<Vec<u8>>,
}

impl Reject {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Reject {
            status,
            message: message.into(),
            headers: Vec::new(),
            body: None,
        }
    }

    /// A backend's refusal, passed on: its status, its end-to-end headers
    /// and its body.
    pub fn passed_on(status: StatusCode, headers: &HeaderMap, body: Vec<u8>) -> Self {
        Reject {
            status,
            message: "the upstream's own answer".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
            body: Some(body),
        }
    }

    /// Adds a header to the answer.
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The answer's headers: what the status calls for, plus any added.
    pub fn answer_headers(&self) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(self.headers.len() + 4);
        for (n, v) in &self.headers {
            headers.append(n.clone(), v.clone());
        }
        if self.body.is_some() {
            return headers;
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self.status {
            StatusCode::UPGRADE_REQUIRED => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            _ => {}
        }
        headers
    }

    /// The answer on the wire, the message as a one-line body; unless
    /// `keep_alive`, it says the connection closes after it.
    pub fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let line = format!("{}\n", self.message);
        let body = self.body.as_deref().unwrap_or(line.as_bytes());
        let mut headers = self.answer_headers();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body.len()));
        if !keep_alive {
            let close = match self.status {
                StatusCode::UPGRADE_REQUIRED if self.body.is_none() => "upgrade, close",
                _ => "close",
            };
            headers.insert(header::CONNECTION, HeaderValue::from_static(close));
        }
        head::encode_response(self.status, &headers, body)
    }
}
