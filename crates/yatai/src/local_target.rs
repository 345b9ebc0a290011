//! The local deploy target, wired into the server: what the runtime needs
//! from the application (token checks for deployments with access
//! authorization) and what the application and the API get from the
//! runtime (extracted archives for image builds, deployments answering by
//! host name on the server's port). The runtime and the application do not
//! know each other; this is where they meet.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::Request;
use axum::response::Response;
use http_body_util::BodyExt;
use yatai_app::AppState;
use yatai_app::auth::Permission;
use yatai_app::images::ArtifactFiles;
use yatai_core::deploy::{ArtifactRef, TargetError};
use yatai_runtime::{AccessDenied, AccessVerifier, LocalRuntime};

/// Checks the tokens of requests to deployments with access authorization:
/// an API token of the deployment's organization that may read its
/// deployments (scope `api`, `read_cluster` or `write_cluster`), as the
/// dashboard and API require to see them.
pub struct ApiTokenAccess {
    pub state: AppState,
}

#[async_trait::async_trait]
impl AccessVerifier for ApiTokenAccess {
    async fn verify(&self, org_uid: &str, token: Option<&str>) -> Result<(), AccessDenied> {
        let denied = |status: u16, message: String| AccessDenied { status, message };
        let Some(token) = token else {
            return Err(denied(
                401,
                "this deployment requires an API token of its organization: send `Authorization: Bearer <token>` \
                 (bentoml.SyncHTTPClient(url, token=…) does this)"
                    .into(),
            ));
        };
        let caller = self.state.auth.authenticate(Some(token)).await.map_err(|e| denied(401, e.to_string()))?;
        if caller.org.uid != org_uid {
            return Err(denied(403, "the API token belongs to another organization than this deployment".into()));
        }
        caller.require(Permission::ReadCluster).map_err(|e| denied(403, e.to_string()))
    }
}

/// Archives as the runtime extracts them (once, safely), for image builds.
pub struct RuntimeFiles(pub Arc<LocalRuntime>);

#[async_trait::async_trait]
impl ArtifactFiles for RuntimeFiles {
    async fn bento_files(&self, bento: &ArtifactRef) -> Result<PathBuf, TargetError> {
        self.0.bento_files(bento).await.map_err(TargetError::from)
    }
    async fn model_files(&self, model: &ArtifactRef) -> Result<PathBuf, TargetError> {
        self.0.model_files(model).await.map_err(TargetError::from)
    }
}

/// Deployments answering on the server's port by host name, through the
/// runtime's proxy.
pub struct RuntimeHosts(pub Arc<LocalRuntime>);

#[async_trait::async_trait]
impl yatai_api::HostRoutes for RuntimeHosts {
    async fn route(&self, label: &str, req: Request, client: Option<SocketAddr>) -> Option<Response> {
        let endpoint = self.0.endpoint_by_host_key(label)?;
        let req = req.map(|b| b.map_err(|e| Box::new(e) as yatai_runtime::proxy::BoxError).boxed_unsync());
        Some(endpoint.handle(req, client).await.map(axum::body::Body::new))
    }
}
