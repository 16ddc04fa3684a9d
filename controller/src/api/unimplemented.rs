//! Naming of UNIMPLEMENTED answers. Every service of the v1 contract is built now; a generated
//! default method (an RPC added to a proto before its handler) still answers UNIMPLEMENTED, and
//! [`NameUnimplementedLayer`] makes that answer name the method.

/// Rewrites the generated stubs' bare "Not yet implemented" into a message naming the method, so
/// a client learns exactly which call this release does not offer yet.
#[derive(Clone, Copy, Default)]
pub struct NameUnimplementedLayer;

impl<S> tower::Layer<S> for NameUnimplementedLayer {
    type Service = NameUnimplemented<S>;

    fn layer(&self, inner: S) -> Self::Service {
        NameUnimplemented(inner)
    }
}

#[derive(Clone)]
pub struct NameUnimplemented<S>(S);

const STUB_MESSAGE: &[u8] = b"Not%20yet%20implemented";

impl<S, B, RB> tower::Service<http::Request<B>> for NameUnimplemented<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().trim_start_matches('/').replace('/', ".");
        let fut = self.0.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            let headers = resp.headers_mut();
            let is_stub = headers.get("grpc-status").is_some_and(|v| v == "12")
                && headers
                    .get("grpc-message")
                    .is_some_and(|v| v.as_bytes() == STUB_MESSAGE);
            if is_stub {
                let msg = format!("{method} is not implemented in this release of Flotilla yet");
                if let Ok(v) = http::HeaderValue::from_str(&msg) {
                    headers.insert("grpc-message", v);
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flotilla_proto::v1 as pb;
    use pb::network_service_client::NetworkServiceClient;
    use tonic::transport::Server;

    /// A service whose RPCs all answer with the generated defaults.
    #[derive(Clone, Copy, Default)]
    struct NotYetImplemented;

    impl pb::network_service_server::NetworkService for NotYetImplemented {}

    #[tokio::test]
    async fn an_unbuilt_rpc_answers_unimplemented_naming_the_method() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = Server::builder().layer(NameUnimplementedLayer).add_service(
            pb::network_service_server::NetworkServiceServer::new(NotYetImplemented),
        );
        let server = tokio::spawn(
            router.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut client = NetworkServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let err = client
            .get_network(pb::GetNetworkRequest::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert_eq!(
            err.message(),
            "flotilla.v1.NetworkService.GetNetwork is not implemented in this release of Flotilla yet"
        );
        server.abort();
    }
}
