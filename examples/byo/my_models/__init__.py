"""A model package of your own, shipped in an image FROM the runtime image."""
