//! Extractors that turn malformed requests into our JSON errors instead of
//! axum's plain-text rejections.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body (`Content-Type: application/json`), limited in size by the
/// router's body limit.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        // Every body is an object. serde would also fill a struct from an
        // array of its fields in order (`[null, null]`), which no client
        // means and the OpenAPI document does not allow.
        let axum::Json(raw) = axum::Json::<Box<serde_json::value::RawValue>>::from_request(req, state).await?;
        if !raw.get().trim_start().starts_with('{') {
            return Err(ApiError::bad_request("the request body must be a JSON object"));
        }
        let v =
            serde_json::from_str(raw.get()).map_err(|e| ApiError::bad_request(format!("invalid request body: {e}")))?;
        Ok(Json(v))
    }
}

pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(v) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(v))
    }
}

pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(v) = axum::extract::Path::<T>::from_request_parts(parts, state).await?;
        Ok(Path(v))
    }
}

/// httpx sends `None` query parameters as empty values (`count=&q=`); treat
/// them as absent, and parse numbers leniently with a clear error.
pub mod lenient {
    use serde::{Deserialize, Deserializer};

    pub fn opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .map(Some)
                .map_err(|_| serde::de::Error::custom(format!("expected a whole number, got {v:?}"))),
        }
    }

    pub fn opt_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        Ok(s.filter(|v| !v.trim().is_empty()))
    }

    pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some("true" | "1" | "True") => Ok(Some(true)),
            Some("false" | "0" | "False") => Ok(Some(false)),
            Some(v) => Err(serde::de::Error::custom(format!("expected true or false, got {v:?}"))),
        }
    }
}
