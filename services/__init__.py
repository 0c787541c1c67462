"""gRPC stage services (any stage on any machine). Filled by the gRPC services issue; the records in
:mod:`facerecon.kernel.records` are already plain numpy so they serialise to protobuf unchanged."""
