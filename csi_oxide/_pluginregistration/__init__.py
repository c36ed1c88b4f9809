"""Stubs generated from proto/pluginregistration.proto by scripts/gen_proto.py; do not edit."""
