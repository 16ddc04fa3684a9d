//! OperationService: durable operations (I5) as users follow them. An operation is visible to
//! whoever can read its project; admins see all.
use std::pin::Pin;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::operation_service_server::OperationService;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::authz::{Action, Principal};
use super::{allow, auth::principal, compute_convert as cc, page_size, paginate, required, Api};
use crate::state::{Command, Operation, Outcome, State};

type OpStream = Pin<Box<dyn Stream<Item = Result<pb::Operation, Status>> + Send>>;

#[derive(Clone)]
pub struct OperationApi(pub Api);

fn visible(p: &Principal, o: &Operation) -> bool {
    p.admin || p.in_project(&o.project_id)
}

/// Sort key putting newer operations first.
fn newest_first(o: &Operation) -> (std::cmp::Reverse<u64>, &str) {
    (std::cmp::Reverse(o.meta.create_revision), o.id.as_str())
}

fn parse_token(token: &str) -> Result<Option<(std::cmp::Reverse<u64>, String)>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let bad =
        || Status::invalid_argument(format!("page_token {token:?} is not one this API gave out"));
    let (rev, id) = token.split_once(':').ok_or_else(bad)?;
    let rev: u64 = rev.parse().map_err(|_| bad())?;
    Ok(Some((std::cmp::Reverse(rev), id.to_owned())))
}

fn find<'s>(state: &'s State, p: &Principal, id: &str) -> Result<&'s Operation, Status> {
    required("operation_id", id)?;
    state
        .operation(id)
        .filter(|o| visible(p, o))
        .ok_or_else(|| Status::not_found(format!("operation {id:?} not found")))
}

#[tonic::async_trait]
impl OperationService for OperationApi {
    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        if r.all_projects && !p.admin {
            return Err(Status::permission_denied(
                "permission denied: --all-projects needs the cluster admin role",
            ));
        }
        let state = self.0.read(r.stale).await?;
        let scope = p
            .token
            .as_ref()
            .map(|t| t.project_id.clone())
            .unwrap_or_default();
        let project = if !r.project.is_empty() {
            Some(
                state
                    .project(&r.project)
                    .map(|x| x.id.clone())
                    .unwrap_or(r.project.clone()),
            )
        } else if r.all_projects || scope.is_empty() {
            None
        } else {
            Some(scope)
        };
        // Newest first: by creation revision, descending (ties by id); the page token is the
        // last operation's "<revision>:<id>".
        let after = parse_token(&r.page_token)?;
        let mut matching: Vec<&Operation> = state
            .operations_after("")
            .filter(|o| {
                visible(&p, o)
                    && project.as_ref().is_none_or(|id| &o.project_id == id)
                    && (r.resource_id.is_empty() || o.resource_id == r.resource_id)
                    && (r.kind.is_empty() || o.kind == r.kind)
                    && (r.parent_id.is_empty() || o.parent_id == r.parent_id)
                    && (r.states.is_empty() || r.states.contains(&(cc::op_state(o) as i32)))
            })
            .collect();
        matching.sort_by(|a, b| newest_first(a).cmp(&newest_first(b)));
        let (page, next) = paginate(
            matching.into_iter().filter(|o| {
                after
                    .as_ref()
                    .is_none_or(|t| newest_first(o) > (t.0, t.1.as_str()))
            }),
            page_size(r.page_size),
            |o| format!("{}:{}", o.meta.create_revision, o.id),
        );
        Ok(Response::new(pb::ListOperationsResponse {
            operations: page.into_iter().map(|o| cc::operation(&state, o)).collect(),
            next_page_token: next,
        }))
    }

    async fn get_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        let state = self.0.read(r.stale).await?;
        let op = find(&state, &p, &r.operation_id)?;
        Ok(Response::new(cc::operation(&state, op)))
    }

    /// The operation now, then again on every change, until it has finished.
    async fn watch_operation(
        &self,
        req: Request<pb::WatchOperationRequest>,
    ) -> Result<Response<OpStream>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        {
            let state = self.0.read(false).await?;
            find(&state, &p, &r.operation_id)?;
        }
        let (tx, rx) = mpsc::channel(16);
        let node = self.0.node.clone();
        tokio::spawn(async move {
            let mut revisions = node.revisions();
            let mut last: Option<pb::Operation> = None;
            loop {
                let now = {
                    let state = node.state();
                    state
                        .operation(&r.operation_id)
                        .map(|o| cc::operation(&state, o))
                };
                let Some(op) = now else {
                    let _ = tx
                        .send(Err(Status::not_found("the operation was forgotten")))
                        .await;
                    return;
                };
                let finished = op.finished_at_ms != 0;
                if last.as_ref() != Some(&op) {
                    if tx.send(Ok(op.clone())).await.is_err() {
                        return;
                    }
                    last = Some(op);
                }
                if finished {
                    return;
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::Operation>, Status> {
        let p = principal(&req)?;
        let r = req.into_inner();
        {
            let state = self.0.read(false).await?;
            let op = find(&state, &p, &r.operation_id)?;
            // Moving servers between hosts is the operator's business (as in Nova); so is
            // stopping it.
            allow(&p, Action::ClusterAdmin, None).map_err(|_| {
                Status::permission_denied(format!(
                    "only administrators may cancel a {} operation",
                    op.kind
                ))
            })?;
        }
        let cmd = Command::CancelOperation {
            operation_id: r.operation_id,
        };
        match self.0.propose(r.request_id, p.name, cmd).await? {
            Outcome::Operation(op) => {
                let state = self.0.node.state();
                Ok(Response::new(cc::operation(&state, &op)))
            }
            other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
        }
    }
}
