"""Protobuf package ``tbox`` (see :mod:`agent.proto`)."""
