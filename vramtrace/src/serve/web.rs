//! The web page: the build of `web/` (React, bundled with its fonts and icons by Vite), embedded
//! in the binary so that one file serves it with no Node and nothing fetched at run time.

use axum::{
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use include_dir::{Dir, include_dir};

static DIST: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/../web/dist");

/// What the page may load and run: only what this server serves. Styles may be inline
/// (the charts and the transitions set them); scripts may not, so that a string a traced
/// process chose cannot run even if some view failed to escape it.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; font-src 'self'; connect-src 'self'; \
                   object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "json" | "webmanifest" => "application/json",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The embedded file at `path` (no leading slash), if any.
pub fn asset(path: &str) -> Option<(&'static str, &'static [u8])> {
    let path = if path.is_empty() { "index.html" } else { path };
    DIST.get_file(path)
        .map(|f| (content_type(path), f.contents()))
}

/// Serves the page and its assets for `GET` paths outside the API; `None` for anything else.
pub fn serve(req: &Request) -> Option<Response> {
    if req.method() != axum::http::Method::GET && req.method() != axum::http::Method::HEAD {
        return None;
    }
    let path = req.uri().path().trim_start_matches('/');
    if path.starts_with("api/") || path == "metrics" || path == "ws" {
        return None;
    }
    let (ctype, body) = asset(path)?;
    // Vite names assets by their content: they never change under the same name.
    let cache = if path.starts_with("assets/") {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    };
    let mut r = (StatusCode::OK, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Some(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_is_embedded() {
        let (ctype, body) = super::asset("").expect("index.html");
        assert!(ctype.starts_with("text/html"));
        let html = String::from_utf8_lossy(body);
        assert!(html.contains("<div id=\"root\">"), "{html}");
        // Nothing from elsewhere: no CDN, no remote fonts.
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{html}"
        );
    }
}
