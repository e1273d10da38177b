"""Downloads by scheme (file, http(s), s3) into a sink: bounded, idle timeouts, cancellable."""
