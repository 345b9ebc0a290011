//! A router that cannot register a route without documenting it: each
//! [`Op`] both adds the handler (with its permission check) and the
//! operation to the OpenAPI document, so the two never drift apart.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use axum::routing::MethodRouter;
use utoipa::ToSchema;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem, PathsBuilder, Ref, RefOr,
    Required, Schema,
};

use crate::auth::{Caller, Permission};
use crate::error::{ApiError, ErrorBody};
use yatai_app::AppState;

/// bentoml's rule for a name or a version (`yatai_core::tag`).
pub const TAG_PART_PATTERN: &str = "^[a-z0-9]([-._a-z0-9]*[a-z0-9])?$";

/// One documented operation.
pub struct Op {
    method: Method,
    path: String,
    summary: String,
    tag: &'static str,
    permission: Option<Permission>,
    body: Option<(Cow<'static, str>, RefOr<Schema>)>,
    ok: Option<(Cow<'static, str>, RefOr<Schema>)>,
    queries: Vec<(&'static str, &'static str)>,
    errors: Vec<u16>,
    schemas: Vec<(String, RefOr<Schema>)>,
}

fn register<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) -> RefOr<Schema> {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

impl Op {
    fn new(method: Method, path: impl Into<String>, summary: impl Into<String>) -> Self {
        Op {
            method,
            path: path.into(),
            summary: summary.into(),
            tag: "",
            permission: None,
            body: None,
            ok: None,
            queries: Vec::new(),
            errors: vec![400, 401, 403],
            schemas: Vec::new(),
        }
    }
    pub fn get(path: impl Into<String>, summary: impl Into<String>) -> Self {
        Self::new(Method::GET, path, summary)
    }
    pub fn post(path: impl Into<String>, summary: impl Into<String>) -> Self {
        Self::new(Method::POST, path, summary)
    }
    pub fn put(path: impl Into<String>, summary: impl Into<String>) -> Self {
        Self::new(Method::PUT, path, summary)
    }
    pub fn patch(path: impl Into<String>, summary: impl Into<String>) -> Self {
        Self::new(Method::PATCH, path, summary)
    }
    pub fn delete(path: impl Into<String>, summary: impl Into<String>) -> Self {
        Self::new(Method::DELETE, path, summary)
    }
    pub fn tag(mut self, tag: &'static str) -> Self {
        self.tag = tag;
        self
    }
    /// The permission the caller's token must grant.
    pub fn perm(mut self, p: Permission) -> Self {
        self.permission = Some(p);
        self
    }
    /// A JSON body: besides its schema, this documents 413 (over the body
    /// limit) and 415 (not sent as `application/json`), which every JSON
    /// route returns.
    pub fn body<T: ToSchema>(mut self) -> Self {
        let r = register::<T>(&mut self.schemas);
        self.body = Some(("application/json".into(), r));
        self.errors.extend_from_slice(&[413, 415]);
        self
    }
    pub fn binary_body(mut self) -> Self {
        let s = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary)));
        self.body = Some(("application/octet-stream".into(), RefOr::T(Schema::Object(s.build()))));
        self
    }
    pub fn ok<T: ToSchema>(mut self) -> Self {
        let r = register::<T>(&mut self.schemas);
        self.ok = Some(("application/json".into(), r));
        self
    }
    pub fn binary_ok(mut self) -> Self {
        let s = ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(utoipa::openapi::KnownFormat::Binary)));
        self.ok = Some(("application/x-tar".into(), RefOr::T(Schema::Object(s.build()))));
        self
    }
    pub fn query(mut self, name: &'static str, description: &'static str) -> Self {
        self.queries.push((name, description));
        self
    }
    /// Error statuses besides 400/401/403.
    pub fn errors(mut self, codes: &[u16]) -> Self {
        self.errors.extend_from_slice(codes);
        self
    }
    /// No token needed (health, signed transfer URLs).
    pub fn public(mut self) -> Self {
        self.errors.retain(|c| *c != 401);
        self
    }
}

/// The API under construction: the axum router and its OpenAPI document.
pub struct Api {
    router: Router<AppState>,
    paths: BTreeMap<String, PathItem>,
    schemas: Vec<(String, RefOr<Schema>)>,
    state: AppState,
}

impl Api {
    pub fn new(state: AppState) -> Self {
        let mut schemas = Vec::new();
        register::<ErrorBody>(&mut schemas);
        Api { router: Router::new(), paths: BTreeMap::new(), schemas, state }
    }

    pub fn route(mut self, op: Op, handler: MethodRouter<AppState>) -> Self {
        let handler = match op.permission {
            Some(p) => handler.route_layer(from_fn_with_state(Arc::new(p), check_permission)),
            None => handler,
        };
        self.router = self.router.route(&op.path, handler);
        self.document(op);
        self
    }

    fn document(&mut self, op: Op) {
        let mut b = OperationBuilder::new()
            .summary(Some(op.summary.clone()))
            .tag(op.tag)
            .operation_id(Some(format!("{} {}", op.method, op.path)));
        // Registry paths name repositories and versions by bentoml's tag rule.
        let registry =
            op.path.starts_with("/api/v1/model_repositories/") || op.path.starts_with("/api/v1/bento_repositories/");
        for seg in op.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                let mut schema = ObjectBuilder::new().schema_type(Type::String);
                if registry && (name == "name" || name == "version") {
                    schema = schema.pattern(Some(TAG_PART_PATTERN)).max_length(Some(yatai_core::tag::MAX_PART_LEN));
                }
                b = b.parameter(
                    ParameterBuilder::new()
                        .name(name)
                        .parameter_in(ParameterIn::Path)
                        .required(Required::True)
                        .schema(Some(schema)),
                );
            }
        }
        for (name, description) in &op.queries {
            b = b.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(*description))
                    .schema(Some(ObjectBuilder::new().schema_type(Type::String))),
            );
        }
        if let Some((ct, schema)) = op.body {
            b = b.request_body(Some(
                RequestBodyBuilder::new()
                    .required(Some(Required::True))
                    .content(ct, ContentBuilder::new().schema(Some(schema)).build())
                    .build(),
            ));
        }
        let mut ok = ResponseBuilder::new().description("OK (the client treats only 200 as success)");
        if let Some((ct, schema)) = op.ok {
            ok = ok.content(ct, ContentBuilder::new().schema(Some(schema)).build());
        }
        b = b.response("200", ok.build());
        let error_ref = RefOr::Ref(Ref::from_schema_name(ErrorBody::name()));
        let mut codes = op.errors.clone();
        if op.path.contains('{') {
            // Whatever the path names may not exist.
            codes.push(404);
        }
        if op.permission.is_none() {
            codes.retain(|c| *c != 401 && *c != 403);
        }
        codes.sort_unstable();
        codes.dedup();
        for code in codes {
            let text =
                axum::http::StatusCode::from_u16(code).ok().and_then(|s| s.canonical_reason()).unwrap_or("error");
            b = b.response(
                code.to_string(),
                ResponseBuilder::new()
                    .description(text)
                    .content("application/json", ContentBuilder::new().schema(Some(error_ref.clone())).build())
                    .build(),
            );
        }
        if let Some(p) = op.permission {
            b = b.security(SecurityRequirement::new("api_token", Vec::<String>::new()));
            // Who may call it, in the document: the isolation matrix test reads it back and
            // proves it holds for every route.
            let (role, scopes) = p.requirement();
            let extension = serde_json::json!({"permission": p.as_str(), "min_role": role.as_str(), "scopes": scopes});
            b = b.extensions(Some(
                utoipa::openapi::extensions::ExtensionsBuilder::new().add("x-yatai-permission", extension).build(),
            ));
        }
        let method = match op.method {
            Method::GET => HttpMethod::Get,
            Method::POST => HttpMethod::Post,
            Method::PUT => HttpMethod::Put,
            Method::PATCH => HttpMethod::Patch,
            Method::DELETE => HttpMethod::Delete,
            _ => HttpMethod::Head,
        };
        let operation = b.build();
        match self.paths.get_mut(&op.path) {
            Some(item) => item.merge_operations(PathItem::new(method, operation)),
            None => {
                self.paths.insert(op.path.clone(), PathItem::new(method, operation));
            }
        }
        self.schemas.extend(op.schemas);
    }

    /// Wraps the routes registered so far in `layer` (e.g. authentication).
    pub fn layer_all<F>(mut self, f: F) -> Self
    where
        F: FnOnce(Router<AppState>) -> Router<AppState>,
    {
        self.router = f(self.router);
        self
    }

    /// Appends another `Api`'s routes and documentation.
    pub fn merge(mut self, other: Api) -> Self {
        self.router = self.router.merge(other.router);
        for (path, item) in other.paths {
            match self.paths.get_mut(&path) {
                Some(existing) => existing.merge_operations(item),
                None => {
                    self.paths.insert(path, item);
                }
            }
        }
        self.schemas.extend(other.schemas);
        self
    }

    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    pub fn finish(self) -> (Router<AppState>, OpenApi) {
        let mut paths = PathsBuilder::new();
        for (path, item) in self.paths {
            paths = paths.path(path, item);
        }
        let mut components = ComponentsBuilder::new().security_scheme(
            "api_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-YATAI-API-TOKEN",
                "An API token (yatai token create, or the dashboard)",
            ))),
        );
        let mut seen = std::collections::BTreeSet::new();
        for (name, schema) in self.schemas {
            if seen.insert(name.clone()) {
                components = components.schema(name, schema);
            }
        }
        let doc = OpenApiBuilder::new()
            .info(
                InfoBuilder::new()
                    .title("yatai-rs")
                    .version(env!("CARGO_PKG_VERSION"))
                    .description(Some(
                        "Registry and deployment API of yatai-rs. Compatible with the bentoml 1.4 client \
                         (bentoml cloud login, push, pull, deployment).",
                    ))
                    .build(),
            )
            .paths(paths.build())
            .components(Some(components.build()))
            .build();
        (self.router, doc)
    }
}

async fn check_permission(State(p): State<Arc<Permission>>, req: Request, next: Next) -> Result<Response, ApiError> {
    let caller = req
        .extensions()
        .get::<Arc<Caller>>()
        .ok_or_else(|| ApiError::internal("route requires a permission but no token was checked"))?;
    caller.require(*p)?;
    Ok(next.run(req).await)
}
