"""The serving surface: one data plane, its REST and gRPC transports, codecs, inference."""
