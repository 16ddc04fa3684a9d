//! The fake's host jobs (`host evacuate`, `host drain`): a plan of two servers and, unless a dry
//! run, a scripted operation whose items move one after the other (see the module doc of
//! [`super`]).

use flotilla_proto::v1;

use super::{snapshot, Fake, T0};

impl Fake {
    /// The plan of a host job and, unless `dry_run`, its recorded script (see the module doc).
    pub(super) fn host_job(
        &self,
        kind: &str,
        host: &str,
        method: &str,
        dry_run: bool,
    ) -> v1::EvacuateHostResponse {
        use v1::OperationState as S;
        let names = [("s-1", "web-1"), ("s-2", "db-1")];
        let plan = names
            .iter()
            .map(|(id, name)| v1::HostPlanEntry {
                server_id: (*id).into(),
                server_name: (*name).into(),
                destination: "cmp2".into(),
                method: method.into(),
                message: String::new(),
            })
            .collect();
        if dry_run {
            return v1::EvacuateHostResponse {
                operation_id: String::new(),
                plan,
            };
        }
        let mut w = self.world.lock().unwrap();
        w.next += 1;
        let id = format!("op-{}", w.next);
        let item = |(sid, name): (&str, &str), state: S, message: &str| v1::OperationItemResult {
            resource_id: sid.into(),
            resource_name: name.into(),
            state: state as i32,
            message: message.into(),
            destination: "cmp2".into(),
            operation_id: format!("{id}-{name}"),
        };
        let half = host.contains("half");
        let mut running = snapshot(&id, kind, host, S::Running, "move_servers");
        running.resource_type = "host".into();
        running.cancellable = true;
        running.items = vec![
            item(names[0], S::Running, ""),
            item(names[1], S::Pending, ""),
        ];
        let mut next = running.clone();
        next.items = vec![
            item(names[0], S::Succeeded, "moved"),
            item(names[1], S::Running, ""),
        ];
        let mut done = next.clone();
        done.cancellable = false;
        done.finished_at_ms = T0 + 9_000;
        if half {
            done.state = S::PartiallySucceeded as i32;
            done.message = "1 of 2 servers moved".into();
            done.items[1] = item(names[1], S::Failed, "no host has room for 64 GiB");
        } else {
            done.state = S::Succeeded as i32;
            done.message = "2 of 2 servers moved".into();
            done.items[1] = item(names[1], S::Succeeded, "moved");
        }
        w.scripts.insert(id.clone(), vec![running, next, done]);
        v1::EvacuateHostResponse {
            operation_id: id,
            plan,
        }
    }
}
