//! Tandem's HTTP/2 pieces shared by its server (the gRPC port) and its sidecar-to-sidecar
//! client: HPACK ([`hpack`]), the frame vocabulary ([`frame`]) and a lean client that
//! multiplexes every call to one peer over one connection ([`client`]).

pub mod body;
pub mod client;
pub mod frame;
pub mod hpack;
