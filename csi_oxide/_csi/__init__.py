"""Stubs generated from proto/csi.proto by scripts/gen_proto.py; do not edit."""
