//! Reading servers: lookups, pages, and the index of servers by host that keeps a host's
//! desired state and reports proportional to its own servers.
use super::servers::{Server, ServerStatus};
use super::State;

impl State {
    pub fn server(&self, id: &str) -> Option<&Server> {
        self.servers.get(id)
    }

    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.servers.values()
    }

    pub fn servers_after<'a>(&'a self, after: &str) -> impl Iterator<Item = &'a Server> + 'a {
        super::page_after(&self.servers, after)
    }

    /// Servers a host should run (or shut down, or destroy: deleting ones are left out).
    pub fn servers_on<'a>(&'a self, host_id: &'a str) -> impl Iterator<Item = &'a Server> + 'a {
        self.placed_on(host_id)
            .filter(|s| s.status != ServerStatus::Deleting)
    }

    /// Servers with a migration under way.
    pub fn migrating_servers(&self) -> impl Iterator<Item = &Server> {
        self.migrating.iter().filter_map(|id| self.servers.get(id))
    }

    /// Servers being migrated to the host.
    pub fn migrating_to<'a>(&'a self, host_id: &'a str) -> impl Iterator<Item = &'a Server> + 'a {
        self.migrating_servers().filter(move |s| {
            s.migration
                .as_ref()
                .is_some_and(|m| m.destination_host_id == host_id)
        })
    }

    /// How many servers are placed on the host.
    pub fn server_count(&self, host_id: &str) -> usize {
        self.servers_by_host.get(host_id).map_or(0, |s| s.len())
    }

    /// Every server placed on the host, deleting ones included.
    pub(super) fn placed_on<'a>(&'a self, host_id: &str) -> impl Iterator<Item = &'a Server> + 'a {
        self.servers_by_host
            .get(host_id)
            .into_iter()
            .flatten()
            .filter_map(|id| self.servers.get(id))
    }

    pub(super) fn index_server(&mut self, host_id: &str, server_id: &str, add: bool) {
        if add {
            self.servers_by_host
                .entry(host_id.to_owned())
                .or_default()
                .insert(server_id.to_owned());
        } else if let Some(set) = self.servers_by_host.get_mut(host_id) {
            set.remove(server_id);
            if set.is_empty() {
                self.servers_by_host.remove(host_id);
            }
        }
    }

    /// The first server that boots from the image, if any (an image in use cannot be deleted).
    pub(super) fn server_using_image(&self, image_id: &str) -> Option<&Server> {
        self.servers.values().find(|s| s.image.id == image_id)
    }
}
