"""Reproducible studies built on the library: ``oaml study`` (:mod:`oaml.study.runs`)."""
