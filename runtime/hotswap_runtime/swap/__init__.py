"""The live model: build, load, validate and activate new weights; leases on the serving model."""
