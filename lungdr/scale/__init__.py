"""The Ray layer: the only lungdr package that imports Ray. It wires the Ray-free core into
Ray Data pipelines, Ray Train loops, Ray Tune searches and a Ray Serve application."""
