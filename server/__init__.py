"""The model owner's side: a frozen OpenCLIP backbone served as a gradient oracle over gRPC."""
