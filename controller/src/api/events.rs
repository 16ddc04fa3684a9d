//! EventService: a watch that first replays retained events after the client's revision, then
//! follows new ones as they are applied. Resuming after a disconnect is just watching again
//! from the last revision seen.
use std::pin::Pin;

use flotilla_proto::v1 as pb;
use flotilla_proto::v1::event_service_server::EventService;
use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::authz::{Action, Principal};
use super::{allow, auth::principal, convert, Api};
use crate::state::Event;

pub struct EventApi(pub Api);

/// Admins see every event; others see the events of projects where they hold a role (as of
/// the start of the watch) and flavor events.
fn visible(p: &Principal, e: &Event) -> bool {
    p.admin
        || e.resource_type == "flavor"
        || (!e.project_id.is_empty() && p.in_project(&e.project_id))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let p = principal(&req)?;
        allow(&p, Action::ReadEvents, None)?;
        let r = req.into_inner();
        // A linearizable starting point: everything committed before the call is visible.
        let mut after = {
            let state = self.0.read(false).await?;
            if r.from_revision == 0 {
                state.revision()
            } else {
                if let Err(oldest) = state.events_after(r.from_revision) {
                    return Err(Status::out_of_range(format!(
                        "revision {} is no longer retained; the oldest retained event is revision \
                         {oldest}: list resources again and watch from their revision",
                        r.from_revision
                    )));
                }
                r.from_revision
            }
        };
        let (tx, rx) = mpsc::channel(256);
        let node = self.0.node.clone();
        tokio::spawn(async move {
            let mut revisions = node.revisions();
            loop {
                // Read a bounded slice of events and the position it ends at under one lock,
                // so nothing applied in between is skipped.
                let batch: Result<(Vec<pb::Event>, u64, bool), u64> = {
                    let state = node.state();
                    state.events_after(after).map(|events| {
                        let slice: Vec<_> = events.take(1024).collect();
                        let more = slice.len() == 1024;
                        let end = match (more, slice.last()) {
                            (true, Some(e)) => e.revision,
                            _ => state.revision().max(after),
                        };
                        let wanted = slice
                            .into_iter()
                            .filter(|e| {
                                r.resource_types.is_empty()
                                    || r.resource_types.contains(&e.resource_type)
                            })
                            .filter(|e| r.resource_id.is_empty() || r.resource_id == e.resource_id)
                            .filter(|e| visible(&p, e))
                            .map(convert::event)
                            .collect();
                        (wanted, end, more)
                    })
                };
                match batch {
                    Ok((events, end, more)) => {
                        for e in events {
                            if tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        after = end;
                        if more {
                            continue;
                        }
                    }
                    Err(oldest) => {
                        let msg = format!(
                            "the watcher fell behind: events after revision {after} were dropped \
                             (oldest retained: {oldest}); list again and watch from there"
                        );
                        let _ = tx.send(Err(Status::out_of_range(msg))).await;
                        return;
                    }
                }
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use flotilla_proto::v1::event_service_client::EventServiceClient;
    use flotilla_proto::v1::event_service_server::EventServiceServer;
    use tonic::service::interceptor::InterceptedService;
    use tonic::transport::Server;

    use super::*;
    use crate::api::PeerDirectory;
    use crate::raft::harness::{create_project, fast_tuning, Cluster};
    use crate::state::{Envelope, Member};

    struct NoPeers;

    #[tonic::async_trait]
    impl PeerDirectory for NoPeers {
        async fn peer_status(&self, _m: &Member) -> Result<pb::MemberStatus, String> {
            Err("no peers in this test".into())
        }
    }

    fn create(name: &str) -> Envelope {
        create_project(&format!("rid-{name}"), name)
    }

    async fn next(stream: &mut tonic::Streaming<pb::Event>) -> pb::Event {
        tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10s")
            .expect("stream healthy")
            .expect("stream open")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_watch_replays_from_a_revision_then_follows_live_changes_with_filters() {
        let cluster = Cluster::start(1, 1, fast_tuning());
        cluster
            .wait_until(Duration::from_secs(10), "a leader", |c| {
                c.leader().is_some()
            })
            .await;
        let node = cluster.node(1).expect("running").clone();
        for name in ["a", "b", "c"] {
            node.propose(&create(name)).await.expect("write");
        }
        let api = Api::new(node.clone(), Arc::new(NoPeers));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            Server::builder()
                .add_service(InterceptedService::new(
                    EventServiceServer::new(EventApi(api)),
                    |mut req: tonic::Request<()>| {
                        req.extensions_mut()
                            .insert(crate::api::authz::Principal::test_admin());
                        Ok(req)
                    },
                ))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = EventServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();

        let req = pb::WatchEventsRequest {
            from_revision: 1,
            ..Default::default()
        };
        let mut stream = client.watch_events(req).await.unwrap().into_inner();
        assert_eq!(
            next(&mut stream).await.resource_name,
            "b",
            "backlog starts after from_revision"
        );
        assert_eq!(next(&mut stream).await.resource_name, "c");
        node.propose(&create("d")).await.expect("write");
        let live = next(&mut stream).await;
        assert_eq!((live.resource_name.as_str(), live.revision), ("d", 4));
        assert_eq!(live.action, pb::EventAction::Created as i32);

        let only_d = pb::WatchEventsRequest {
            from_revision: 1,
            resource_id: "id-d".into(),
            resource_types: vec!["project".into()],
        };
        let mut filtered = client.watch_events(only_d).await.unwrap().into_inner();
        assert_eq!(
            next(&mut filtered).await.resource_name,
            "d",
            "filters skip other resources"
        );

        let none = pb::WatchEventsRequest {
            resource_types: vec!["flavor".into()],
            ..Default::default()
        };
        let mut flavors = client.watch_events(none).await.unwrap().into_inner();
        node.propose(&create("e")).await.expect("write");
        let quiet = tokio::time::timeout(Duration::from_millis(300), flavors.message()).await;
        assert!(
            quiet.is_err(),
            "a project change must not reach a flavor-only watch: {quiet:?}"
        );
        server.abort();
        cluster.shutdown();
    }
}
