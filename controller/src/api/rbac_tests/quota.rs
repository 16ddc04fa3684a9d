//! QuotaService rows of the matrix, and its behaviour through the real service.
use flotilla_proto::v1 as pb;
use pb::quota_service_server::QuotaService;
use tonic::{Code, Status};

use super::{Rpc, World};

impl World {
    pub(super) async fn call_quota(
        &self,
        rpc: Rpc,
        token: Option<&str>,
        project: String,
    ) -> Result<(), Status> {
        match rpc {
            Rpc::GetQuota => {
                let r = pb::GetQuotaRequest {
                    project,
                    stale: false,
                };
                self.quotas.get_quota(self.req(token, r)?).await?;
            }
            Rpc::SetQuota => {
                let r = pb::SetQuotaRequest {
                    project,
                    ports: Some(60),
                    ..Default::default()
                };
                self.quotas.set_quota(self.req(token, r)?).await?;
            }
            Rpc::GetDefaultQuota => {
                let r = pb::GetDefaultQuotaRequest::default();
                self.quotas.get_default_quota(self.req(token, r)?).await?;
            }
            Rpc::SetDefaultQuota => {
                // The built-in value: allowed calls leave the defaults as they are.
                let r = pb::SetDefaultQuotaRequest {
                    vcpus: Some(20),
                    ..Default::default()
                };
                self.quotas.set_default_quota(self.req(token, r)?).await?;
            }
            other => unreachable!("{other:?} is not a quota RPC"),
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_are_set_by_admins_and_read_in_the_callers_project() {
    let w = World::start().await;
    w.populate().await;
    let member = w.login("member", "own").await.unwrap().token;
    let get_own = || async {
        let r = w
            .req(Some(&member), pb::GetQuotaRequest::default())
            .unwrap();
        w.quotas.get_quota(r).await.map(|q| q.into_inner())
    };
    let q = get_own().await.unwrap();
    let vcpus = q.vcpus.unwrap();
    assert_eq!(
        (vcpus.limit, vcpus.in_use, vcpus.from_default),
        (20, 0, true)
    );

    let r = w.admin(pb::SetQuotaRequest {
        project: "own".into(),
        vcpus: Some(-1),
        ..Default::default()
    });
    w.quotas.set_quota(r).await.unwrap();
    let vcpus = get_own().await.unwrap().vcpus.unwrap();
    assert_eq!((vcpus.limit, vcpus.from_default), (-1, false));

    let r = w.admin(pb::SetDefaultQuotaRequest {
        vcpus: Some(4),
        instances: Some(2),
        ..Default::default()
    });
    let d = w.quotas.set_default_quota(r).await.unwrap().into_inner();
    assert_eq!((d.vcpus, d.instances, d.ports), (4, 2, 50));
    let q = get_own().await.unwrap();
    assert_eq!(q.vcpus.unwrap().limit, -1, "the project's own value wins");
    assert_eq!(q.instances.unwrap().limit, 2);

    let r = w.admin(pb::SetQuotaRequest {
        project: "own".into(),
        reset_to_default: vec!["vcpus".into()],
        ..Default::default()
    });
    let q = w.quotas.set_quota(r).await.unwrap().into_inner();
    assert_eq!(q.vcpus.unwrap().limit, 4);
    assert!(q.vcpus.unwrap().from_default);

    for bad in [
        pb::SetQuotaRequest {
            project: "own".into(),
            ram_mib: Some(-2),
            ..Default::default()
        },
        pb::SetQuotaRequest {
            project: "own".into(),
            reset_to_default: vec!["cores".into()],
            ..Default::default()
        },
    ] {
        let err = w.quotas.set_quota(w.admin(bad)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let r = w.admin(pb::GetQuotaRequest {
        project: "nope".into(),
        stale: false,
    });
    assert_eq!(
        w.quotas.get_quota(r).await.unwrap_err().code(),
        Code::NotFound
    );
    w.cluster.shutdown();
}
