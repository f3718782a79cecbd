"""Reproducible studies built on the library: ``oaml study`` (:mod:`oaml.experiments.real_faces`)."""
