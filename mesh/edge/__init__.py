"""The gRPC edge: protobuf in, core calls, protobuf out. The only place that imports grpc."""
