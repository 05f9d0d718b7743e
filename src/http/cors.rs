//! CORS: which browser origins may call the API (`cors-origins`), the headers their answers
//! carry, and preflight (`OPTIONS`) answers.
//!
//! With no origins configured, livetap sends no CORS headers and answers `OPTIONS` with 405,
//! so browsers keep the same-origin rule. Credentials mode is never allowed: browsers
//! authenticate with an explicit `Authorization` header or a live `?token=`, never with
//! cookies or cached HTTP authentication, so a page on another origin cannot ride on them.

use super::{HttpError, LiveBody};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, Response, StatusCode};

/// The configured origin rules.
#[derive(Debug, Clone)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
    max_age: u64,
}

const ALLOW_HEADERS: &str = "authorization, content-type, last-event-id, x-signature";
const EXPOSE_HEADERS: &str = "retry-after, www-authenticate";

impl Cors {
    /// The rules of `config`.
    pub fn new(config: &crate::config::Config) -> Cors {
        Cors {
            any: config.cors_origins.iter().any(|o| o == "*"),
            origins: config
                .cors_origins
                .iter()
                .filter(|o| *o != "*")
                .map(|o| o.to_ascii_lowercase())
                .collect(),
            max_age: config.cors_max_age_secs,
        }
    }

    /// True when no origin is configured (CORS off).
    pub fn is_empty(&self) -> bool {
        !self.any && self.origins.is_empty()
    }

    /// True when `origin` may call the API.
    pub fn allows(&self, origin: &HeaderValue) -> bool {
        self.any || origin.to_str().is_ok_and(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o)))
    }

    fn allow_origin(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }

    /// Adds the CORS headers an answer to `origin` carries.
    pub fn decorate(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        // Caches must keep answers to different origins apart.
        h.append(header::VARY, HeaderValue::from_static("origin"));
        let Some(o) = origin.filter(|o| self.allows(o)) else { return };
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(o));
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSE_HEADERS));
    }

    /// Answers a preflight request for a route whose method is `method`.
    pub fn preflight<B>(
        &self,
        req: &Request<B>,
        method: &'static str,
    ) -> Result<Response<LiveBody>, HttpError> {
        if self.is_empty() {
            return Err(HttpError::MethodNotAllowed(method));
        }
        let origin = req.headers().get(header::ORIGIN);
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return Err(HttpError::OriginNotAllowed);
        };
        let mut r = Response::new(LiveBody::Full(None));
        *r.status_mut() = StatusCode::NO_CONTENT;
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.allow_origin(origin));
        let methods = if method == "POST" { "POST, OPTIONS" } else { "GET, HEAD, OPTIONS" };
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static(methods));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static(ALLOW_HEADERS));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(self.max_age));
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        let c = Cors::new(&crate::config::Config {
            cors_origins: vec!["https://dash.example.org".into()],
            ..Default::default()
        });
        assert!(c.allows(&HeaderValue::from_static("https://DASH.example.org")));
        assert!(!c.allows(&HeaderValue::from_static("https://evil.example")));
        let mut h = HeaderMap::new();
        c.decorate(Some(&HeaderValue::from_static("https://evil.example")), &mut h);
        assert!(h.get(header::ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
        assert!(Cors::new(&crate::config::Config::default()).is_empty());
    }
}
