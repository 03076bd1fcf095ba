//! The dashboard: one page and its assets, built into the binary (`include_str!`), served by
//! the admin server at `/` and `/ui/...` (DESIGN, "Admin HTTP", `GET /`).
//!
//! Owns: the page's bytes and how they are served. The page only reads the admin API
//! (`/api/v1/status`, `/windows`, `/top`, `/stream`) from its own origin; its charts are
//! drawn on canvas by `chart.js`, written here, so nothing is fetched from the internet.
//!
//! ```text
//! GET /                 index.html   text/html        Cache-Control: no-cache
//! GET /ui/style.css     style.css    text/css         Cache-Control: no-cache
//! GET /ui/chart.js      chart.js     text/javascript  (every asset: an ETag, and a 304 for
//! GET /ui/app.js        app.js       text/javascript   a matching If-None-Match)
//! GET /ui/favicon.svg   favicon.svg  image/svg+xml
//! ```
//!
//! Every answer carries [`CONTENT_SECURITY_POLICY`]: scripts and styles come only from these
//! files (none inline), and scripts may connect only to the admin address itself. Assets are
//! revalidated on each load rather than cached for a time, so a new binary's page is never
//! mixed with an old one's scripts; the ETag makes revalidation a 304 without a body.

#![forbid(unsafe_code)]

use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The policy every dashboard answer carries: the page's scripts reach only its own origin.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self'; \
img-src 'self' data:; style-src 'self'; script-src 'self'; base-uri 'none'; \
form-action 'none'; frame-ancestors 'none'";

/// One file of the page.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static str,
}

/// The page itself (served at `/`).
const INDEX: Asset = Asset {
    name: "index.html",
    content_type: "text/html; charset=utf-8",
    body: include_str!("index.html"),
};

/// What `/ui/NAME` serves.
const ASSETS: &[Asset] = &[
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_str!("style.css"),
    },
    Asset {
        name: "chart.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("chart.js"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_str!("app.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_str!("favicon.svg"),
    },
];

/// FNV-1a of `bytes`: the ETag of a file, fixed for a build.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The headers every dashboard answer carries.
fn common_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// `asset`, or a 304 when the client's copy (`If-None-Match`) is this build's.
fn serve(asset: &Asset, request: &HeaderMap) -> Response {
    let etag = format!("\"{:016x}\"", fnv1a(asset.body.as_bytes()));
    // `If-None-Match` is a list of tags (or `*`); a value that is not text matches nothing.
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.trim_start_matches("W/") == etag);
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = asset.body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        r
    };
    let headers = response.headers_mut();
    common_headers(headers);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(value) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, value);
    }
    response
}

/// `GET /`: the page.
pub async fn index(request: HeaderMap) -> Response {
    serve(&INDEX, &request)
}

/// `GET /ui/NAME`: one of the page's files, or a 404.
pub async fn asset(Path(name): Path<String>, request: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(asset) => serve(asset, &request),
        None => {
            let mut r = (StatusCode::NOT_FOUND, "no such dashboard file\n").into_response();
            common_headers(r.headers_mut());
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_names_only_files_that_are_served() {
        for reference in [
            "/ui/style.css",
            "/ui/chart.js",
            "/ui/app.js",
            "/ui/favicon.svg",
        ] {
            assert!(
                INDEX.body.contains(reference),
                "index.html lacks {reference}"
            );
            let name = reference.trim_start_matches("/ui/");
            assert!(
                ASSETS.iter().any(|a| a.name == name),
                "{name} is not served"
            );
        }
        // The policy forbids inline code: the page must have none.
        assert!(!INDEX.body.contains("<style"), "inline style in index.html");
        assert!(
            !INDEX.body.contains(" style="),
            "inline style attribute in index.html"
        );
        assert!(
            !INDEX.body.contains("<script>"),
            "inline script in index.html"
        );
        for handler in [
            "onclick=",
            "onload=",
            "onerror=",
            "onchange=",
            "oninput=",
            "javascript:",
        ] {
            assert!(!INDEX.body.contains(handler), "{handler} in index.html");
        }
    }

    #[test]
    fn etags_differ_by_content() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
    }
}
