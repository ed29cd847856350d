"""The demo zoos: the datasets (demo_data), the tiny pretrained base (tinylm), and the builder that trains a zoo
(demo_build). Nothing else in core imports this package: it stands on the engine, the map and reuse."""
