//! `GET /asyncOverview`: [`AsyncQueryService::overview`](crate::AsyncQueryService::overview)
//! as a JSON:API document, for admins.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use serde_json::json;

use super::document::{ApiError, respond};
use super::handlers::{Answer, principal};
use super::{App, PrincipalResolver};

pub(super) async fn overview<R: PrincipalResolver>(
    State(app): State<Arc<App<R>>>,
    request: Request,
) -> Answer {
    let (parts, _) = request.into_parts();
    let principal = principal(&app, &parts).await?;
    let overview = app.service.overview(&principal).await?;
    let attributes = serde_json::to_value(&overview).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the overview could not be written: {e}"),
        )
    })?;
    let document = json!({ "data": {
        "type": "asyncOverview",
        "id": overview.at.timestamp_micros().to_string(),
        "attributes": attributes,
    } });
    Ok(respond(StatusCode::OK, &document))
}
