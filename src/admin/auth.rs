//! `[admin] token`: every route but `/healthz` needs `Authorization: Bearer TOKEN`. A browser
//! cannot add that header to the dashboard's requests, so `/?token=TOKEN` answers with a
//! cookie (`HttpOnly`, `SameSite=Strict`) holding it and a redirect to `/`; the page's own
//! requests then carry the cookie. Tokens are compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The cookie that carries the token for the dashboard.
const COOKIE: &str = "sluice_token";

/// Equal without telling, by its timing, how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

/// The middleware: lets a request through when it carries the token (or needs none).
pub async fn require_token(
    State(token): State<Option<Arc<str>>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    if path == "/healthz" {
        return next.run(request).await;
    }
    let headers = request.headers();
    let given = bearer(headers).or_else(|| cookie(headers));
    if given.is_some_and(|g| same(g.as_bytes(), token.as_bytes())) {
        return next.run(request).await;
    }
    if path == "/"
        && let Some(query) = request.uri().query()
        && let Some(t) = query.split('&').find_map(|p| p.strip_prefix("token="))
        && same(t.as_bytes(), token.as_bytes())
    {
        let cookie = format!("{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/");
        return (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_string()),
                (header::SET_COOKIE, cookie),
            ],
        )
            .into_response();
    }
    let body = serde_json::json!({
        "error": "this route needs the admin token: Authorization: Bearer TOKEN"
    });
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"sluice\"")],
        axum::Json(body),
    )
        .into_response()
}
