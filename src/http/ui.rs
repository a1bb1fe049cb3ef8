//! What people see: the playground at `/` (HTML, CSS and JavaScript written for this project,
//! in `src/http/ui/`, embedded at build time) and the interactive API reference at `/docs`
//! (swagger-ui-dist from npm, embedded by build.rs when installed). No CDN: both work offline.

use crate::render::Colormap;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub async fn index() -> Html<&'static str> {
    Html(include_str!("ui/index.html"))
}

pub async fn script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!("ui/playground.js"),
    )
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", include_str!("ui/playground.css"))
}

/// The server's colour tables (256 RGB colours each), so that the page redraws an overlay in
/// exactly the colours the server would.
pub async fn colormaps() -> Response {
    let tables: serde_json::Map<String, serde_json::Value> = Colormap::ALL
        .iter()
        .map(|c| (c.name().to_string(), serde_json::json!(c.lut().to_vec())))
        .collect();
    (
        [(header::CACHE_CONTROL, "max-age=3600")],
        axum::Json(tables),
    )
        .into_response()
}

#[cfg(swagger_ui)]
pub async fn docs() -> Html<&'static str> {
    Html(include_str!("ui/docs.html"))
}

/// Built without swagger-ui-dist: say so, and where the document is.
#[cfg(not(swagger_ui))]
pub async fn docs() -> Html<&'static str> {
    Html(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>gradcam-serve API</title>\
         <p>This build has no interactive reference (scripts/setup.sh installs swagger-ui-dist \
         from npm; then build again). The contract is <a href=\"/openapi.yaml\">/openapi.yaml</a>; \
         the playground is at <a href=\"/\">/</a>.</p></html>",
    )
}

#[cfg(swagger_ui)]
pub async fn docs_script() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        include_str!(concat!(env!("OUT_DIR"), "/swagger-ui-bundle.js")),
    )
}

#[cfg(swagger_ui)]
pub async fn docs_style() -> Response {
    asset(
        "text/css; charset=utf-8",
        include_str!(concat!(env!("OUT_DIR"), "/swagger-ui.css")),
    )
}

#[cfg(swagger_ui)]
pub async fn docs_init() -> Response {
    asset(
        "text/javascript; charset=utf-8",
        "window.ui = SwaggerUIBundle({ url: '/openapi.yaml', dom_id: '#reference', \
         deepLinking: true, tryItOutEnabled: true });",
    )
}

/// The routes of this module: the playground's only when it is switched on.
pub fn routes(
    router: axum::Router<super::AppState>,
    playground: bool,
) -> axum::Router<super::AppState> {
    use axum::routing::get;
    let router = router.route("/docs", get(docs));
    #[cfg(swagger_ui)]
    let router = router
        .route("/docs/swagger-ui-bundle.js", get(docs_script))
        .route("/docs/swagger-ui.css", get(docs_style))
        .route("/docs/init.js", get(docs_init));
    if !playground {
        return router;
    }
    router
        .route("/", get(index))
        .route("/ui/playground.js", get(script))
        .route("/ui/playground.css", get(style))
        .route("/ui/colormaps.json", get(colormaps))
}
