"""The HTTP server: the design's API, the job queue's routes and the page, over the use cases."""
