//! The Raft network factory.
//!
//! A node of a one-member cluster never sends Raft RPCs, so this transport answers every RPC
//! with `Unreachable`; the cluster transport over the authenticated cluster port replaces it
//! when membership grows beyond one node.

use std::future::Future;

use openraft::RaftNetworkFactory;
use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::impls::BasicNode;
use openraft::network::{RPCOption, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::{SnapshotOf, VoteOf};

use super::TypeConfig;
use super::snapshot::SnapshotFile;

/// Creates [`LocalOnly`] clients.
#[derive(Clone, Default)]
pub struct NetworkFactory;

/// A client for a peer this node has no transport to.
pub struct LocalOnly {
    target: u64,
}

impl LocalOnly {
    fn unreachable(&self) -> Unreachable<TypeConfig> {
        let err = std::io::Error::other(format!("no cluster transport to node {}", self.target));
        Unreachable::new(&err)
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = LocalOnly;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> LocalOnly {
        LocalOnly { target }
    }
}

impl RaftNetworkV2<TypeConfig> for LocalOnly {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: VoteOf<TypeConfig>,
        _snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
