//! The frame of every page, the style sheet, and small pieces several
//! pages use (numbers, times, charts). Everything is server-rendered with
//! maud, which escapes every value it prints; no page has a script.

use std::time::SystemTime;

use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use crate::auth::Role;

/// The style sheet.
const CSS: &str = include_str!("../../assets/app.css");

/// `GET /static/app.css`.
pub async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
        .into_response()
}

/// Who is signed in, for the header.
pub(crate) struct Viewer<'a> {
    pub role: Role,
    pub name: &'a str,
    pub csrf: &'a str,
}

/// A whole page.
pub(crate) fn page(title: &str, viewer: Option<&Viewer<'_>>, body: Markup) -> Html<String> {
    page_with(title, viewer, None, body)
}

/// A whole page that reloads itself every `refresh` seconds (the
/// dashboard's live numbers, without a script).
pub(crate) fn page_with(
    title: &str,
    viewer: Option<&Viewer<'_>>,
    refresh: Option<u32>,
    body: Markup,
) -> Html<String> {
    let m = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(r) = refresh {
                    meta http-equiv="refresh" content=(r);
                }
                title { (title) " — postoffice" }
                link rel="stylesheet" href="/static/app.css";
            }
            body {
                header {
                    span.brand { "postoffice" }
                    @if let Some(v) = viewer {
                        nav {
                            @match v.role {
                                Role::Admin => {
                                    a href="/admin" { "Dashboard" }
                                    a href="/admin/domains" { "Domains" }
                                    a href="/admin/users" { "Users" }
                                    a href="/admin/queue" { "Queue" }
                                    a href="/admin/quarantine" { "Quarantine" }
                                    a href="/admin/sessions" { "Sessions" }
                                }
                                Role::User => {
                                    a href="/me" { "My mailbox" }
                                }
                            }
                        }
                        div.who {
                            span #who { (v.name) }
                            form.inline method="post" action="/logout" {
                                input type="hidden" name="csrf" value=(v.csrf);
                                button type="submit" id="signout" { "Sign out" }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    Html(m.into_string())
}

/// The page of an error.
pub(crate) fn error_page(status: StatusCode, message: &str) -> Html<String> {
    page(
        status.canonical_reason().unwrap_or("Error"),
        None,
        html! {
            h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("Error")) }
            p.error { (message) }
            p { a href="/" { "Back" } }
        },
    )
}

/// A result message shown above a page after an action (`?done=...`):
/// fixed texts only, so a link cannot put words of its choice on a page.
pub(crate) fn notice(code: Option<&str>) -> Markup {
    let text = match code.unwrap_or("") {
        "domain-added" => "Domain added.",
        "domain-removed" => "Domain removed.",
        "domain-updated" => "Domain policy saved.",
        "user-updated" => "User saved.",
        "user-removed" => "User removed.",
        "password-changed" => "Password changed.",
        "queue-retried" => "The entry will be tried again now.",
        "queue-deleted" => "The entry was deleted (no bounce sent).",
        "queue-released" => "The held entry was released and will be sent now.",
        "queue-flushed" => "Every entry will be tried again now.",
        "released" => "The message was released into the mailbox.",
        "deleted" => "The message was deleted.",
        _ => return html! {},
    };
    html! { p.notice #notice { (text) } }
}

/// Octets as "1.2 MB".
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// "2d03h", "1h05m", "4m10s", "12s".
pub(crate) fn age(secs: u64) -> String {
    let (d, h, m, s) = (
        secs / 86_400,
        secs % 86_400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// Seconds since `t`.
pub(crate) fn since(t: SystemTime) -> u64 {
    t.elapsed().map_or(0, |d| d.as_secs())
}

/// A date for a table.
pub(crate) fn date(t: SystemTime) -> String {
    postoffice_common::date::rfc5322(t)
}

/// A small line chart of `values` as inline SVG.
pub(crate) fn sparkline(values: &[i64]) -> Markup {
    if values.len() < 2 {
        return html! {};
    }
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f64;
    let n = (values.len() - 1) as f64;
    let points: Vec<String> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = i as f64 / n * 200.0;
            let y = 38.0 - (*v as f64 / max) * 36.0;
            format!("{x:.1},{y:.1}")
        })
        .collect();
    html! {
        svg viewBox="0 0 200 40" preserveAspectRatio="none" role="img" aria-label="last hour" {
            polyline points=(points.join(" ")) {}
        }
    }
}

/// A bar for usage against a limit.
pub(crate) fn meter(used: u64, limit: Option<u64>) -> Markup {
    match limit {
        Some(l) if l > 0 => {
            let pct = (used as f64 / l as f64 * 100.0).min(100.0);
            // SVG attributes, not a style attribute: the CSP allows no
            // inline style.
            html! {
                svg.meter viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label={ (format!("{pct:.0}%")) } {
                    rect width="100" height="6" fill="#e3e8ee" {}
                    rect width=(format!("{pct:.1}")) height="6" fill="#2456a6" {}
                }
            }
        }
        _ => html! {},
    }
}
