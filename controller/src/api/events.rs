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

use super::{convert, Api};

pub struct EventApi(pub Api);

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
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
