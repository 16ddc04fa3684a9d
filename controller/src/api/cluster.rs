//! ClusterService: member status across the cluster, membership changes, leader transfer.
use std::time::Duration;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::cluster_service_server::ClusterService;
use tonic::{Request, Response, Status};

use super::authz::Action;
use super::{allow, auth::principal, convert, error, Api};
use crate::raft::{MemberChange, NodeHandle, Role};
use crate::state::{Member, Outcome};

/// How a controller asks a peer for its status.
#[tonic::async_trait]
pub trait PeerDirectory: Send + Sync + 'static {
    async fn peer_status(&self, member: &Member) -> Result<pb::MemberStatus, String>;
}

pub struct ClusterApi(pub Api);

/// This controller's own status.
pub fn member_status(node: &NodeHandle) -> pb::MemberStatus {
    let s = node.status();
    let state = node.state();
    let me = state.member(s.id);
    let role = match s.role {
        Role::Follower => pb::Role::Follower,
        Role::Candidate => pb::Role::Candidate,
        Role::PreCandidate => pb::Role::PreCandidate,
        Role::Leader => pb::Role::Leader,
    };
    pb::MemberStatus {
        id: s.id,
        name: me.map(|m| m.name.clone()).unwrap_or_default(),
        client_address: me.map(|m| m.client_address.clone()).unwrap_or_default(),
        role: role as i32,
        term: s.term,
        leader_id: s.leader_id,
        commit_index: s.commit_index,
        applied_index: state.applied_index(),
        revision: state.revision(),
        state_checksum: state.checksum(),
        snapshot_index: s.snapshot_index,
        first_log_index: s.first_log_index,
        last_log_index: s.last_log_index,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        error: String::new(),
    }
}

fn members_response(api: &Api) -> pb::ListMembersResponse {
    let voters = api.node.status().voters;
    let state = api.node.state();
    pb::ListMembersResponse {
        members: state
            .members()
            .map(|m| convert::member(m, voters.contains(&m.id)))
            .collect(),
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn get_cluster_status(
        &self,
        req: Request<pb::GetClusterStatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        allow(&principal(&req)?, Action::ClusterAdmin, None)?;
        let me = self.0.node.id();
        let members: Vec<Member> = self.0.node.state().members().cloned().collect();
        let mut statuses = Vec::with_capacity(members.len());
        let asks = members.iter().filter(|m| m.id != me).map(|m| async move {
            let answer =
                tokio::time::timeout(Duration::from_secs(2), self.0.peers.peer_status(m)).await;
            match answer {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => unreachable_member(m, e),
                Err(_) => unreachable_member(m, "no answer within 2s".into()),
            }
        });
        let answers = futures::future::join_all(asks).await;
        statuses.push(member_status(&self.0.node));
        statuses.extend(answers);
        if members.is_empty() {
            // Not bootstrapped yet: only our own view exists.
        }
        statuses.sort_by_key(|s| s.id);
        let leader_id = self.0.node.status().leader_id;
        Ok(Response::new(pb::ClusterStatus {
            leader_id,
            members: statuses,
        }))
    }

    async fn get_member_status(
        &self,
        req: Request<pb::GetMemberStatusRequest>,
    ) -> Result<Response<pb::MemberStatus>, Status> {
        allow(&principal(&req)?, Action::ClusterAdmin, None)?;
        Ok(Response::new(member_status(&self.0.node)))
    }

    async fn list_members(
        &self,
        req: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        allow(&principal(&req)?, Action::ClusterAdmin, None)?;
        drop(self.0.read(req.into_inner().stale).await?);
        Ok(Response::new(members_response(&self.0)))
    }

    async fn add_member(
        &self,
        req: Request<pb::AddMemberRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        allow(&principal(&req)?, Action::ClusterAdmin, None)?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument(
                "member id must be a non-zero integer",
            ));
        }
        for (field, v) in [
            ("name", &r.name),
            ("client_address", &r.client_address),
            ("peer_address", &r.peer_address),
        ] {
            if v.trim().is_empty() {
                return Err(Status::invalid_argument(format!("{field} is required")));
            }
        }
        let member = Member {
            id: r.id,
            name: r.name,
            client_address: r.client_address,
            peer_address: r.peer_address,
        };
        if self.0.node.state().was_removed(member.id) {
            return Err(Status::failed_precondition(format!(
                "member id {} belonged to a removed member; ids are never reused, pick a new one",
                member.id
            )));
        }
        // A retry of an add that already happened succeeds instead of failing.
        if self.0.node.state().member(member.id) == Some(&member)
            && self.0.node.status().voters.contains(&member.id)
        {
            return Ok(Response::new(members_response(&self.0)));
        }
        match self.0.node.change_members(MemberChange::Add(member)).await {
            Ok(Outcome::Members(_)) | Ok(_) => Ok(Response::new(members_response(&self.0))),
            Err(e) => Err(error::node(e, &self.0.node)),
        }
    }

    async fn remove_member(
        &self,
        req: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        allow(&principal(&req)?, Action::ClusterAdmin, None)?;
        let r = req.into_inner();
        if r.id == 0 {
            return Err(Status::invalid_argument(
                "member id must be a non-zero integer",
            ));
        }
        // A retry of a removal that already happened succeeds instead of failing.
        if self.0.node.state().was_removed(r.id) && !self.0.node.status().voters.contains(&r.id) {
            return Ok(Response::new(members_response(&self.0)));
        }
        match self.0.node.change_members(MemberChange::Remove(r.id)).await {
            Ok(_) => Ok(Response::new(members_response(&self.0))),
            Err(e) => Err(error::node(e, &self.0.node)),
        }
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::MemberStatus>, Status> {
        allow(&principal(&req)?, Action::ClusterAdmin, None)?;
        let target = req.into_inner().target_id;
        self.0
            .node
            .transfer_leader(target)
            .await
            .map_err(|e| error::node(e, &self.0.node))?;
        Ok(Response::new(member_status(&self.0.node)))
    }
}

fn unreachable_member(m: &Member, error: String) -> pb::MemberStatus {
    pb::MemberStatus {
        id: m.id,
        name: m.name.clone(),
        client_address: m.client_address.clone(),
        role: pb::Role::Unreachable as i32,
        error,
        ..Default::default()
    }
}
